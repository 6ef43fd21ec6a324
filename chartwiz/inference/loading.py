"""
Loading ChartWiz for answering (and training, which loads its processor the same way): the device and the checkpoint
checked first, then the model, an unmerged PEFT adapter on top, and the processor with its fast tokenizer.
"""

import logging
import os
import re
from typing import Optional

import torch

from chartwiz.errors import ChartWizOSError, ChartWizValueError


def check_device(device: Optional[str | torch.device]) -> Optional[torch.device]:
    """
    `device` as a `torch.device`, after checking that this machine has it; `None` stays `None`. Raises `ValueError`
    for a string torch does not read as a device, a device type torch cannot use here (`cuda` without CUDA), or an
    index past the devices present.
    """
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ChartWizValueError(
            f"Unknown device {device!r}: use cpu, cuda, cuda:N (or mps, xpu where present)."
        ) from None
    if parsed.type == "cpu":
        return parsed
    # torch.cuda, torch.mps, torch.xpu...: each device type a model can run on has a module that says if it is here
    backend = getattr(torch, parsed.type, None)
    if not callable(getattr(backend, "is_available", None)):
        raise ChartWizValueError(f"Device {device!r} is not one to run a model on: use cpu or cuda.")
    if not backend.is_available():
        raise ChartWizValueError(
            f"Device {device!r} is not available: torch {torch.__version__} finds no {parsed.type} here."
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise ChartWizValueError(
            f"Device {device!r} does not exist: this machine has {count} {parsed.type} device(s)."
        )
    return parsed


def check_checkpoint(model_name_or_path: str | os.PathLike, **kwargs) -> None:
    """
    Checks that `model_name_or_path` is a ChartWiz checkpoint (a local directory or a Hub repo) before anything is
    loaded, with a one-line error for a path that does not exist, a directory without `config.json`, another kind of
    model, or a config without its vision and text parts. `kwargs`: the Hub arguments of `from_pretrained`.
    """
    from chartwiz.checkpoints import describe_model_type, read_config_dict
    from chartwiz_hf.configuration_chartwiz import ChartWizConfig

    name = os.fspath(model_name_or_path)
    config_dict = read_config_dict(name, **kwargs)
    if config_dict.get("model_type") != ChartWizConfig.model_type:
        raise ChartWizValueError(
            f"{name} holds {describe_model_type(config_dict)}, not a ChartWiz model (model_type 'chartwiz'); build "
            "one with `chartwiz compose`, or a tiny one with `chartwiz init-tiny`."
        )
    try:
        ChartWizConfig.from_dict(dict(config_dict))
    except (ValueError, TypeError) as error:
        raise ChartWizValueError(f"{name}: {error}") from None


def load_chartwiz(
    model_name_or_path: str, device: Optional[str] = None, dtype="auto", adapter: Optional[str] = None, **kwargs
):
    """
    Model and processor from a local directory or the Hub, through the Auto classes; with `adapter`, a PEFT (LoRA)
    adapter folder is applied on top without merging. The device and the checkpoint are checked first
    (`check_device`, `check_checkpoint`), weights that cannot be read are reported as such, and weights missing from
    the checkpoint, unexpected or of another shape are refused (`from_pretrained_complete`), so a wrong input gives
    a one-line `ValueError` or `OSError` rather than a traceback, a download attempt or random weights.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText

    from chartwiz.checkpoints import from_pretrained_complete

    device = check_device(device)
    check_checkpoint(model_name_or_path, **kwargs)
    try:
        model = from_pretrained_complete(AutoModelForImageTextToText, model_name_or_path, dtype=dtype, **kwargs)
    except SafetensorError as error:
        raise ChartWizOSError(
            f"{model_name_or_path}: cannot read the weights ({error}); the safetensors file is truncated or corrupt, "
            "save or download it again."
        ) from None
    if adapter is not None:
        model = load_adapter(model, adapter, os.fspath(model_name_or_path))
    if device is not None:
        model = model.to(device)
    return model.eval(), load_processor(model_name_or_path, **kwargs)


# torch's message for each weight of another shape in `load_state_dict`.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in "
    r"current model is torch\.Size\(\[([^\]]*)\]\)"
)


def read_adapter_config(adapter: str):
    """The `PeftConfig` of an adapter folder or Hub repo; a `ChartWizValueError` where there is no adapter there."""
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter)
    except ValueError as error:
        raise ChartWizValueError(f"{adapter} is not a PEFT adapter (no adapter_config.json): {error}") from None


def load_adapter(model, adapter: str, base: str):
    """
    `model` (loaded from `base`) with the PEFT (LoRA) adapter of `adapter` applied, unmerged. A folder that is not an
    adapter, and an adapter whose weights have other shapes than the model's (named), are one-line errors.
    """
    from peft import PeftModel

    read_adapter_config(adapter)
    try:
        return PeftModel.from_pretrained(model, adapter)
    except RuntimeError as error:
        found = _SIZE_MISMATCH.findall(str(error))
        if not found:
            raise
        shown = "; ".join(
            f"{name}: {shape.replace(', ', 'x')} in the adapter, {size.replace(', ', 'x')} in the model"
            for name, shape, size in found[:3]
        )
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ChartWizValueError(
            f"{adapter} does not fit {base}: {len(found)} weights have another shape ({shown}{more})."
        ) from None


def load_processor(model_name_or_path: str, **kwargs):
    """
    The processor of a checkpoint with its fast tokenizer, the one way training, merging and answering load it: a
    slow SentencePiece twin splits text differently around special tokens, so a model would answer on other ids than
    it was trained on. `kwargs`: the Hub arguments of `from_pretrained` (`revision`, `trust_remote_code`...).
    """
    from transformers import AutoProcessor

    # transformers 4.57's AutoImageProcessor advises a fast image processor, which ChartWiz does not have;
    # `use_fast=False` would quiet it but also reach AutoTokenizer and pick the slow tokenizer. Quiet the advice alone.
    advice = logging.getLogger("transformers.models.auto.image_processing_auto")
    level = advice.level
    advice.setLevel(logging.ERROR)
    try:
        return AutoProcessor.from_pretrained(model_name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        # A checkpoint without its tokenizer or image processor files: the folder is incomplete, not the code wrong.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ChartWizOSError(
            f"{model_name_or_path}: cannot load its processor (tokenizer and image processor): {reason}"
        ) from error
    finally:
        advice.setLevel(level)


__all__ = [
    "check_checkpoint",
    "check_device",
    "load_adapter",
    "load_chartwiz",
    "load_processor",
    "read_adapter_config",
]
