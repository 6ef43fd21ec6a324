"""Reading the config of a checkpoint, local or on the Hub, with one-line errors that name it."""

import os


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
        raise ValueError(f"{name} is a file; a checkpoint is a directory (or a Hub repo).")
    is_local = os.path.isdir(name)
    if not is_local:
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise FileNotFoundError(f"{name}: no such directory.") from None
    elif not os.path.isfile(os.path.join(name, kwargs.get("subfolder") or "", "config.json")):
        raise OSError(f"{name} has no config.json, so it is not a saved model.")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(name, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except OSError as error:
        if is_local:
            raise OSError(f"{name}: {error}") from None
        if constants.HF_HUB_OFFLINE:
            raise OSError(f"{name}: no such directory (and no Hub lookup: HF_HUB_OFFLINE is set).") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OSError(f"{name}: no such directory, and no Hub repo of that name could be read: {reason}") from None
    return config_dict


def describe_model_type(config_dict: dict) -> str:
    """`a 'llama' model`, or what the config lacks, for error messages."""
    model_type = config_dict.get("model_type")
    return f"a {model_type!r} model" if model_type else "a config.json without a model_type"


__all__ = ["describe_model_type", "read_config_dict"]
