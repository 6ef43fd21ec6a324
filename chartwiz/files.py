"""Writing files and checkpoint folders so that an interruption never leaves one half written or mixed."""

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence

from .errors import ChartWizValueError
from .fingerprints import TRAINING_RUN_FILE


logger = logging.getLogger(__name__)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """
    Writes `text` (UTF-8) to a temporary file beside `path`, flushes it to disk and renames it into place: a reader,
    or a run that resumes after a kill, sees the old file or the new one, never a part of it.
    """
    path = os.fspath(path)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """`data` as indented JSON (Korean kept as written), through `write_text_atomic`."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


# Any of these at the top of a folder makes it a saved model, an adapter or a training run: what `--overwrite`
# (and the recipe's `--overwrite_output_dir`) may replace. A folder of other files is never emptied.
CHECKPOINT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "adapter_config.json",
        "adapter_model.safetensors",
        TRAINING_RUN_FILE,
    }
)


# The help of `--overwrite`, for every command that writes a checkpoint folder.
OVERWRITE_HELP = (
    "replace what the output folder holds: a saved model, adapter or training run there is deleted once the new "
    "checkpoint is written (and put back if the command fails), so that the folder holds this command's files only"
)


def _shown(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_folder(path: str | os.PathLike, overwrite: bool, inputs: Sequence[str] = ()) -> bool:
    """
    Checks, before anything is loaded or written, that a command may write a checkpoint into `path`, and says
    whether there is something to replace. A file, a non-empty folder without `overwrite`, a folder of other files
    than a checkpoint's (even with `overwrite`) and a folder that is or holds one of the command's `inputs` are
    refused with a `ChartWizValueError`.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ChartWizValueError(f"{path} is a file, not a directory.")
    real = os.path.realpath(path)
    for source in inputs:
        if source and os.path.exists(source):
            inside = os.path.realpath(source)
            if inside == real or inside.startswith(real + os.sep):
                raise ChartWizValueError(
                    f"{path} is (or holds) {source}, which this command reads: write the checkpoint elsewhere."
                )
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if not names:
        return False
    if not overwrite:
        raise ChartWizValueError(f"{path} is not empty; pass --overwrite to replace what is there.")
    if not CHECKPOINT_FILES & set(names):
        raise ChartWizValueError(
            f"{path} holds files that are not a saved model, adapter or training run ({_shown(names)}); --overwrite "
            "only replaces one of those: choose an empty folder, or empty this one."
        )
    return True


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str] = ()):
    """
    The folder a command writes a checkpoint into, which ends up holding exactly what the command wrote: files of an
    earlier checkpoint there (an `adapter_config.json` beside merged weights would load the adapter a second time)
    must not outlive it. Checked first (`check_output_folder`). With `overwrite`, the earlier folder is set aside
    beside `path`, the command writes into a new `path`, and the earlier one is deleted once the command succeeded,
    or put back if it failed or was interrupted; a command that fails leaves nothing of its own either. (A kill, which
    nothing can catch, may leave the earlier folder beside `path` as `.NAME.replaced-*`; the next replacement of
    `path` that succeeds removes it.)

    Args:
        path (`str` or `os.PathLike`): the output folder; created if needed.
        overwrite (`bool`, defaults to `False`): replace a saved model, adapter or training run there.
        inputs (`Sequence[str]`, defaults to `()`): the paths the command reads, which `path` must not be or hold.
    """
    path = os.fspath(path)
    replace = check_output_folder(path, overwrite, inputs)
    real = os.path.realpath(path)  # a link to the folder keeps pointing at the new one
    created, aside = not os.path.exists(real), None
    if replace:
        aside = tempfile.mkdtemp(dir=os.path.dirname(real), prefix=f".{os.path.basename(real)}.replaced-")
        os.rmdir(aside)
        os.rename(real, aside)
    os.makedirs(real, exist_ok=True)
    try:
        yield path
    except BaseException:
        # Nothing of a failed command stays: the folder is as it was before (absent, empty, or the earlier one).
        if created or aside is not None:
            shutil.rmtree(real, ignore_errors=True)
        else:
            clear_checkpoint_folder(real)
        if aside is not None:
            os.rename(aside, real)
        raise
    # The earlier folder, and any that a killed replacement of this one left beside it.
    prefix = f".{os.path.basename(real)}.replaced-"
    for name in os.listdir(os.path.dirname(real)):
        if name.startswith(prefix):
            earlier = os.path.join(os.path.dirname(real), name)
            shutil.rmtree(earlier, ignore_errors=True)
            if os.path.exists(earlier):
                logger.warning("%s holds the checkpoint %s replaced and could not be removed", earlier, path)


def clear_checkpoint_folder(path: str | os.PathLike) -> list[str]:
    """
    Removes everything in `path`, a folder that `check_output_folder` accepted for overwriting (a saved model,
    adapter or training run) or one only this process wrote into; returns the names removed. For a folder written in
    place over a long job, as the recipe's `output_dir` is, where `replacing_folder` cannot set the old one aside.
    """
    names = sorted(os.listdir(path))
    for name in names:
        entry = os.path.join(path, name)
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        else:
            os.remove(entry)
    return names


__all__ = [
    "CHECKPOINT_FILES",
    "OVERWRITE_HELP",
    "check_output_folder",
    "clear_checkpoint_folder",
    "replacing_folder",
    "write_json_atomic",
    "write_text_atomic",
]
