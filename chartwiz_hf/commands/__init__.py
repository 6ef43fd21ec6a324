"""The `chartwiz` sub-commands, one module each: `register(subcommands)` adds the command's parser."""

import os

from ..errors import ChartWizValueError


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuses to write a checkpoint into a non-empty `path` unless `overwrite` (its `--overwrite` flag) is set."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ChartWizValueError(f"{path} is a file, not a directory.")
    if not overwrite and os.path.isdir(path) and os.listdir(path):
        raise ChartWizValueError(f"{path} is not empty; pass --overwrite to write over what is there.")
