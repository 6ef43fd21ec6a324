"""
The optional parts of ChartWiz: which `pip install "chartwiz[...]"` extra brings each package that only training,
evaluation or the demo imports. The core install (loading, `ask`, `infer`, `data build`) imports none of them.
"""

import importlib
from types import ModuleType
from typing import Optional

from .errors import ChartWizError


# The top-level module of each optional package -> the extra of setup.cfg that installs it.
OPTIONAL_MODULES = {
    "trl": "train",
    "matplotlib": "eval",
    "rapidfuzz": "eval",
    "rouge_score": "eval",
    "sacrebleu": "eval",
    "scipy": "eval",
    "pandas": "demo",
    "streamlit": "demo",
    "deepspeed": "deepspeed",
}


class MissingExtraError(ChartWizError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def missing_extra_message(module: str, purpose: str, extra: Optional[str] = None) -> str:
    package = module.split(".")[0]
    extra = extra or OPTIONAL_MODULES.get(package)
    hint = f"pip install 'chartwiz[{extra}]'" if extra else f"pip install {package}"
    return f"{purpose} needs {package}, which is not installed: {hint}"


def require(module: str, purpose: str, extra: Optional[str] = None) -> ModuleType:
    """
    Imports `module` of an optional package, or raises `MissingExtraError` with one line naming the extra.

    Args:
        module (`str`): the module to import (`"rapidfuzz.distance"`).
        purpose (`str`): what needs it, the start of the message (`"The table metric"`).
        extra (`str`, *optional*): the extra to name, where it is not the package's own in `OPTIONAL_MODULES`
            (matplotlib draws the synthetic charts of `[train]` and the report of `[eval]`).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        # Only the optional package itself being absent is this error; a broken import inside it stays as it is.
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(missing_extra_message(module, purpose, extra)) from None
