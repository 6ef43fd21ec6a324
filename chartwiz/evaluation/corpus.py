"""What every metric shares: corpus means in percent over paired references and predictions."""

import math
from collections.abc import Sequence


def mean_percent(values: Sequence[float]) -> float:
    return 100.0 * math.fsum(values) / len(values) if values else 0.0


def check_lengths(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")
