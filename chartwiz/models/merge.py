"""Merging a PEFT (LoRA) adapter into its ChartWiz base: one full checkpoint that loads with the Auto classes."""

import json
import logging
import os
from typing import Optional

from chartwiz.errors import ChartWizValueError
from chartwiz.fingerprints import TRAINING_RUN_FILE, checkpoint_fingerprint, describe_changes


logger = logging.getLogger(__name__)


def _same_path(first: str, second: str) -> bool:
    return os.path.exists(first) and os.path.exists(second) and os.path.samefile(first, second)


def _recorded_base(adapter: str) -> Optional[dict]:
    """The fingerprint of the model the adapter was trained from, where the training recipe recorded it."""
    path = os.path.join(adapter, TRAINING_RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file).get("model_fingerprint")


def check_base(base: str, adapter: str, trained_on: Optional[str]) -> None:
    """
    Refuses to merge `adapter` onto a `base` other than the model it was trained on: by the fingerprint the training
    run recorded (`chartwiz_run.json`), else by `trained_on` (the adapter config's `base_model_name_or_path`), a path
    compared by what is at it. LoRA weights fit any base of the same shapes, and silently make a model nobody trained.
    """
    remedy = "pass the adapter's own base, or --no-base-check if you mean to merge onto another model"
    recorded = _recorded_base(adapter) if os.path.isdir(adapter) else None
    if recorded is not None:
        current = checkpoint_fingerprint(base) if os.path.isdir(base) else None
        if current != recorded:
            files = describe_changes(recorded, current) if isinstance(current, dict) else ""
            raise ChartWizValueError(
                f"{base} is not the model {adapter} was trained on: "
                + (
                    f"its files differ from those recorded in {TRAINING_RUN_FILE} ({files})"
                    if files
                    else "not a folder"
                )
                + f"; {remedy}."
            )
        return
    if not trained_on:
        logger.warning("%s does not say which base it was trained on; merging onto %s unchecked", adapter, base)
        return
    # Paths compared by what they resolve to, so the right base given from another working directory is the base.
    if trained_on == base or _same_path(trained_on, base):
        return
    if os.path.isdir(trained_on) and os.path.isdir(base):
        if checkpoint_fingerprint(trained_on) == checkpoint_fingerprint(base):
            return
        raise ChartWizValueError(
            f"{adapter} was trained on {trained_on} (its base_model_name_or_path), and {base} holds other files "
            f"({describe_changes(checkpoint_fingerprint(trained_on), checkpoint_fingerprint(base))}); {remedy}."
        )
    unresolved = ""
    if not os.path.isabs(trained_on) and not os.path.exists(trained_on):
        unresolved = (
            f" (if that is a path relative to the folder the adapter was trained in, it is not there from here, "
            f"{os.getcwd()}: run merge from that folder)"
        )
    raise ChartWizValueError(
        f"{adapter} was trained on {trained_on} (its base_model_name_or_path), not {base}{unresolved}; {remedy}."
    )


def merge_adapter(
    base_model_name_or_path: str,
    adapter_name_or_path: str,
    output_dir: str,
    dtype="auto",
    revision: Optional[str] = None,
    check_base_model: bool = True,
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
        check_base_model (`bool`, *optional*, defaults to `True`):
            Refuse a base other than the adapter's own (`check_base`).

    Returns:
        The merged `ChartWizForConditionalGeneration`.
    """
    from transformers import AutoModelForImageTextToText

    from chartwiz.checkpoints import from_pretrained_complete
    from chartwiz.inference.loading import check_checkpoint, load_adapter, load_processor, read_adapter_config

    for source in (base_model_name_or_path, adapter_name_or_path):
        if _same_path(source, output_dir):
            raise ChartWizValueError(
                f"--out {output_dir} is the folder {source}: write the merged checkpoint elsewhere."
            )
    peft_config = read_adapter_config(adapter_name_or_path)
    check_checkpoint(base_model_name_or_path, revision=revision)
    if check_base_model:
        check_base(base_model_name_or_path, adapter_name_or_path, peft_config.base_model_name_or_path)

    model = from_pretrained_complete(
        AutoModelForImageTextToText, base_model_name_or_path, dtype=dtype, revision=revision
    )
    model = load_adapter(model, adapter_name_or_path, base_model_name_or_path)
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


__all__ = ["check_base", "merge_adapter"]
