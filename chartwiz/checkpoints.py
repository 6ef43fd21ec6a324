"""Reading a checkpoint, local or on the Hub: its config, and weights that must all fit, with one-line errors."""

import contextlib
import logging
import os

from .errors import ChartWizError, ChartWizFileNotFoundError, ChartWizOSError, ChartWizValueError


_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")


def read_config_dict(name_or_path: str | os.PathLike, **kwargs) -> dict:
    """
    The `config.json` of a checkpoint directory or Hub repo, as a dict. A path that does not exist, a file, a
    directory without `config.json` and a repo that cannot be read raise `FileNotFoundError`, `ValueError` or
    `OSError` naming `name_or_path`, instead of transformers' messages about repo ids and connections.

    Args:
        name_or_path (`str` or `os.PathLike`): a local directory or a Hub repo id.
        kwargs: `from_pretrained`'s Hub arguments (`revision`, `token`, `subfolder`...); others are ignored.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import PretrainedConfig

    name = os.fspath(name_or_path)
    if os.path.isfile(name):
        raise ChartWizValueError(f"{name} is a file; a checkpoint is a directory (or a Hub repo).")
    is_local = os.path.isdir(name)
    if not is_local:
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ChartWizFileNotFoundError(f"{name}: no such directory.") from None
    elif not os.path.isfile(os.path.join(name, kwargs.get("subfolder") or "", "config.json")):
        raise ChartWizOSError(f"{name} has no config.json, so it is not a saved model.")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(name, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except OSError as error:
        if is_local:
            raise ChartWizOSError(f"{name}: {error}") from None
        if constants.HF_HUB_OFFLINE:
            raise ChartWizOSError(f"{name}: no such directory (and no Hub lookup: HF_HUB_OFFLINE is set).") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ChartWizOSError(
            f"{name}: no such directory, and no Hub repo of that name could be read: {reason}"
        ) from None
    return config_dict


def _names(entries, limit: int = 3) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def check_loading_info(name: str, loading_info: dict) -> None:
    """
    Raises a one-line `ValueError` naming the first few weights when `from_pretrained(..., output_loading_info=True)`
    reports weights missing from the checkpoint (they would be left random), weights the model has no place for, or
    weights of another shape. transformers only warns about them; a model answering with random weights is worse.
    """
    parts = []
    for field, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected")):
        names = sorted(loading_info.get(field) or [])
        if names:
            parts.append(f"{len(names)} {what} ({_names(names)})")
    # transformers 4 lists the names of weights of another shape, 5 (name, shape in the file, shape in the model).
    mismatched = sorted(loading_info.get("mismatched_keys") or [], key=str)
    if mismatched:
        described = [
            f"{entry[0]}: {'x'.join(map(str, entry[1]))} in the file, {'x'.join(map(str, entry[2]))} in the model"
            if isinstance(entry, tuple) and len(entry) == 3
            else str(entry)
            for entry in mismatched
        ]
        parts.append(f"{len(mismatched)} of another shape ({_names(described)})")
    errors = [str(message).splitlines()[0] for message in loading_info.get("error_msgs") or [] if str(message)]
    if errors:
        parts.append(f"loading errors ({_names(errors, 1)})")
    if parts:
        raise ChartWizValueError(
            f"{name}: the weights do not fit the model: {'; '.join(parts)}. The checkpoint is incomplete or belongs "
            "to another model; save or download it again."
        )


@contextlib.contextmanager
def reading_checkpoint(name_or_path: str | os.PathLike):
    """
    Turns the `OSError` with which transformers refuses a checkpoint's files (a folder without its weights or its
    tokenizer, a Hub repo that cannot be read) into a one-line `ChartWizOSError` naming the checkpoint: what the user
    gave, not a defect.
    """
    try:
        yield
    except ChartWizError:
        raise
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ChartWizOSError(f"{os.fspath(name_or_path)}: {reason}") from error


class _BelowErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def from_pretrained_complete(model_class, name_or_path: str | os.PathLike, **kwargs):
    """
    `model_class.from_pretrained(name_or_path, **kwargs)` that refuses a checkpoint whose weights do not fit the
    model (`check_loading_info`) instead of initializing the missing ones at random or failing with a traceback. A
    local folder is loaded by its absolute path, which the model keeps as its `name_or_path`.
    """
    # transformers 5 logs its own table of the same findings as a warning; the one-line error below replaces it. A
    # filter, not a level: transformers 5.24 runs extra checks (and warns) when this logger's own level is raised.
    report = logging.getLogger("transformers.modeling_utils")
    quiet = _BelowErrors()
    report.addFilter(quiet)
    name = os.fspath(name_or_path)
    # A local folder by its absolute path: the model's `name_or_path`, which PEFT records as an adapter's base, then
    # names the same folder from any working directory (`chartwiz merge` checks the base by it).
    location = os.path.abspath(name) if os.path.isdir(name) else name
    try:
        with reading_checkpoint(name):
            model, loading_info = model_class.from_pretrained(
                location, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
    finally:
        report.removeFilter(quiet)
    check_loading_info(name, loading_info)
    return model


def describe_model_type(config_dict: dict) -> str:
    """`a 'llama' model`, or what the config lacks, for error messages."""
    model_type = config_dict.get("model_type")
    return f"a {model_type!r} model" if model_type else "a config.json without a model_type"


__all__ = [
    "check_loading_info",
    "describe_model_type",
    "from_pretrained_complete",
    "read_config_dict",
    "reading_checkpoint",
]
