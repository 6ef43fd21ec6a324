"""
Synthetic AI-Hub charts: the release's layout and JSON schema, rendered by matplotlib with Korean text. The data of a
chart (`sampling`), its text (`text`), its image (`rendering`) and the output tree (`writing`) each have a module.
"""

from .rendering import render_chart
from .sampling import CHART_SIZE, SynthChart, chart_split, make_chart
from .text import described_chart_type
from .writing import FOLDER_OF_TYPE, MANIFEST_NAME, generate


__all__ = [
    "CHART_SIZE",
    "FOLDER_OF_TYPE",
    "MANIFEST_NAME",
    "SynthChart",
    "chart_split",
    "described_chart_type",
    "generate",
    "make_chart",
    "render_chart",
]
