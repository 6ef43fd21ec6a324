"""
The model card of a training run: TRL's card (metadata, framework versions, tracking links, citations) with what it
lacks for ChartWiz added: the stage, the data, the settings and losses of the run, and a quick start that loads the
model with its image.
"""

import os
import re
from typing import Optional

from huggingface_hub import ModelCard


STAGES = {
    "projector": "stage 1, projector pretraining",
    "projector_and_language_model": "stage 2, finetuning of the projector and the language model",
    "all": "finetuning of every part (vision encoder, projector, language model)",
}
# TRL's card template (trl/templates/lm_model_card.md) has these sections; ours go around them.
_TRL_QUICK_START = re.compile(r"^## Quick start\n.*?(?=^## )", flags=re.DOTALL | re.MULTILINE)
_TRL_VERSIONS = "### Framework versions"
# The template links the base model to the Hub even when it was a local folder, which TRL then reports as None.
_TRL_NO_BASE_MODEL = "[None](https://huggingface.co/None)"


def hub_repo_id(name: Optional[str]) -> Optional[str]:
    """`name` where it is a Hub repo id (`org/name`, no such local path), else None: a local folder is not linked."""
    return name if name and not os.path.exists(name) and name.count("/") == 1 else None


def card_details(script_args, model_args, peft_config, train_dataset, eval_dataset) -> dict:
    """What `ChartWizSFTTrainer`'s model card says about the run beside the trainer's own arguments."""
    details = {
        "stage": "stage 2 with LoRA, adapters on the language model and the projector in full"
        if peft_config is not None
        else STAGES[script_args.tune],
        "tune": script_args.tune,
        "base_model": model_args.model_name_or_path,
        "dataset_name": script_args.dataset_name,
        "dataset_config": script_args.dataset_config,
        "train_rows": len(train_dataset),
        "eval_rows": len(eval_dataset) if eval_dataset is not None else None,
    }
    if peft_config is not None:
        details["lora"] = (
            f"r {peft_config.r}, alpha {peft_config.lora_alpha}, dropout {peft_config.lora_dropout}, targets "
            f"{peft_config.target_modules}, saved in full: {peft_config.modules_to_save}"
        )
    return details


def add_chartwiz_sections(card: ModelCard, trainer, model_name: str) -> ModelCard:
    """
    What TRL's model card lacks for a ChartWiz run, added to it: the card's language and pipeline tag, the base parts
    (stage, what was trained, where it started), the dataset and its config, the settings and losses of the run, and
    a quick start that loads the model with its image (TRL's is a text-generation pipeline, which cannot take one).
    `trainer` is the `ChartWizSFTTrainer` that ran.
    """
    details = trainer.card_details
    _set_metadata(card, details)
    card.text = _place_sections(
        card.text, details.get("base_model"), _quick_start(details, model_name), _training_section(trainer)
    )
    return card


def _set_metadata(card: ModelCard, details: dict):
    card.data.language = ["ko"]
    card.data.pipeline_tag = "image-text-to-text"
    if details.get("lora"):
        card.data.library_name = "peft"
    if hub_repo_id(details.get("base_model")):
        card.data.base_model = hub_repo_id(details.get("base_model"))


def _settings(trainer) -> list[tuple]:
    """The rows of the settings table: the stage and its data, then the arguments that shaped the run."""
    details, args = trainer.card_details, trainer.args
    world_size = args.world_size
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    rows = [
        ("stage", details.get("stage")),
        ("trained", details.get("tune")),
        ("started from", details.get("base_model")),
        ("dataset", f"{details.get('dataset_name')} ({details.get('dataset_config')})"),
        ("train rows", details.get("train_rows")),
        ("eval rows", details.get("eval_rows")),
        ("learning rate", args.learning_rate),
        ("projector learning rate", trainer.projector_learning_rate or args.learning_rate),
        ("epochs", args.num_train_epochs if args.max_steps <= 0 else f"max_steps={args.max_steps}"),
        (
            "batch per device x accumulation x processes",
            f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x {world_size}",
        ),
        ("global batch", args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size),
        ("schedule", f"{scheduler}, warmup ratio {args.warmup_ratio}"),
        ("weight decay", args.weight_decay),
        ("max length", args.max_length),
        ("precision", "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"),
        ("gradient checkpointing", args.gradient_checkpointing),
        ("length grouping", args.group_by_length),
        ("seed", args.seed),
    ]
    if details.get("lora"):
        rows.append(("LoRA", details["lora"]))
    return rows


def _last_losses(log_history: list[dict]) -> dict:
    """The last train and eval loss the trainer logged; None for one it never logged."""
    losses = {"train_loss": None, "eval_loss": None}
    for entry in log_history:
        losses.update({key: entry[key] for key in losses if key in entry})
    return losses


def _training_section(trainer) -> str:
    table = "\n".join(f"| {key} | {value} |" for key, value in _settings(trainer))
    losses = _last_losses(trainer.state.log_history)
    results = "\n".join(f"| {key} | {value:.4f} |" for key, value in losses.items() if value is not None)
    return (
        f"### Settings\n\n| setting | value |\n| --- | --- |\n{table}\n\n"
        f"### Results\n\n| metric | value |\n| --- | --- |\n{results or '| (none logged) | |'}\n\n"
    )


def _quick_start(details: dict, model_name: str) -> str:
    """What the model is and how to load it: `chartwiz ask` with the adapter's base, or the Auto classes."""
    base_model = details.get("base_model")
    if details.get("lora"):
        usage = (
            "```bash\n"
            f'chartwiz ask --model {base_model} --adapter {model_name} chart.png "가장 큰 값은?"\n'
            f"chartwiz merge --base {base_model} --adapter {model_name} --out {model_name}-merged\n"
            "```"
        )
    else:
        usage = (
            "```python\n"
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            f'model = AutoModelForImageTextToText.from_pretrained("{model_name}", trust_remote_code=True)\n'
            f'processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)\n'
            "```"
        )
    about = (
        "ChartWiz (a Pix2Struct/DePlot encoder, an MLP projector and a Korean causal language model) after "
        f"{details.get('stage')}, trained with TRL's `SFTTrainer` by `recipes/sft_chartwiz.py` (loss on the answers "
        "only)."
    )
    return f"{about}\n\n## Quick start\n\n{usage}\n\n"


def _place_sections(text: str, base_model: Optional[str], quick_start: str, training: str) -> str:
    """
    TRL's card text with our quick start in place of its own and the training section before its framework versions;
    either goes at the end where the template has no such section.
    """
    text = text.replace(_TRL_NO_BASE_MODEL, f"`{base_model}`")
    text, replaced = _TRL_QUICK_START.subn(lambda _: quick_start, text, count=1)
    if not replaced:
        text = f"{text.rstrip()}\n\n{quick_start}"
    if _TRL_VERSIONS in text:
        text = text.replace(_TRL_VERSIONS, f"{training}{_TRL_VERSIONS}", 1)
    else:
        text = f"{text.rstrip()}\n\n## Training\n\n{training}"
    return text


__all__ = ["STAGES", "add_chartwiz_sections", "card_details", "hub_repo_id"]
