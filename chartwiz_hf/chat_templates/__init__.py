"""The chat templates ChartWiz models were trained with, shipped as Jinja files and set by compose and init-tiny."""

import os

from chartwiz.errors import ChartWizValueError
from chartwiz.names import CHAT_TEMPLATES


_TEMPLATE_DIR = os.path.dirname(os.path.abspath(__file__))


def load_chat_template(name: str) -> str:
    """The Jinja source of a named template: `synatra_mini` (the 1.3B model) or `vicuna_v1` (the 7B model)."""
    if name not in CHAT_TEMPLATES:
        raise ChartWizValueError(f"Unknown chat template {name!r}; choose from {', '.join(CHAT_TEMPLATES)}.")
    with open(os.path.join(_TEMPLATE_DIR, f"{name}.jinja"), encoding="utf-8") as file:
        return file.read()


__all__ = ["CHAT_TEMPLATES", "load_chat_template"]
