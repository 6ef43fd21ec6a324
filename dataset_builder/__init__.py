"""AI-Hub chart data for ChartWiz: the contract, a `datasets` builder, Parquet materialization and synthetic charts."""

from .aihub import BadRecord, table_text
from .build import build_dataset
from .builder import ChartWizAIHub, ChartWizAIHubConfig
from .hub import push_dataset


__all__ = ["BadRecord", "ChartWizAIHub", "ChartWizAIHubConfig", "build_dataset", "push_dataset", "table_text"]
