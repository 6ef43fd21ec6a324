"""Merging a PEFT (LoRA) adapter into its ChartWiz base: one full checkpoint that loads with the Auto classes."""

import logging
import os
from typing import Optional


logger = logging.getLogger(__name__)


def _same_path(first: str, second: str) -> bool:
    return os.path.exists(first) and os.path.exists(second) and os.path.samefile(first, second)


def merge_adapter(
    base_model_name_or_path: str,
    adapter_name_or_path: str,
    output_dir: str,
    dtype="auto",
    revision: Optional[str] = None,
):
    """
    Folds a LoRA adapter (and the modules it saved in full, such as the projector) into the base model's weights
    and saves a full checkpoint: safetensors weights, config, code files and the processor with its font.

    Args:
        base_model_name_or_path (`str`):
            The ChartWiz checkpoint the adapter was trained on (local folder or Hub repo).
        adapter_name_or_path (`str`):
            The adapter folder (`adapter_config.json` + `adapter_model.safetensors`) or Hub repo.
        output_dir (`str`):
            Where to write the merged checkpoint; neither the base nor the adapter folder.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            The dtype to load (and save) the base model in.
        revision (`str`, *optional*):
            The base model's revision on the Hub.

    Returns:
        The merged `ChartWizForConditionalGeneration`.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .inference import load_processor

    for source in (base_model_name_or_path, adapter_name_or_path):
        if _same_path(source, output_dir):
            raise ValueError(f"--out {output_dir} is the folder {source}: write the merged checkpoint elsewhere.")
    try:
        PeftConfig.from_pretrained(adapter_name_or_path)
    except ValueError as error:
        raise ValueError(f"{adapter_name_or_path} is not a PEFT adapter (no adapter_config.json): {error}") from None
    config = AutoConfig.from_pretrained(base_model_name_or_path, revision=revision)
    if config.model_type != "chartwiz":
        raise ValueError(f"{base_model_name_or_path} is a {config.model_type!r} checkpoint, not a ChartWiz one.")

    model = AutoModelForImageTextToText.from_pretrained(base_model_name_or_path, dtype=dtype, revision=revision)
    model = PeftModel.from_pretrained(model, adapter_name_or_path)
    # LoRA updates are folded in as W + scale * B @ A; modules saved in full replace their originals.
    merged = model.merge_and_unload()
    merged.save_pretrained(output_dir)

    # Training saves the processor beside the adapter; an adapter without one uses the base model's.
    adapter_has_processor = os.path.isfile(os.path.join(adapter_name_or_path, "processor_config.json")) or (
        os.path.isfile(os.path.join(adapter_name_or_path, "preprocessor_config.json"))
    )
    if adapter_has_processor:
        processor = load_processor(adapter_name_or_path)
    else:
        processor = load_processor(base_model_name_or_path, revision=revision)
    processor.save_pretrained(output_dir)
    logger.info("Merged %s into %s: %s", adapter_name_or_path, base_model_name_or_path, output_dir)
    return merged


__all__ = ["merge_adapter"]
