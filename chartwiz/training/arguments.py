"""The argument dataclasses of `recipes/sft_chartwiz.py`, beside TRL's `ModelConfig`: what to train, and on what."""

from dataclasses import dataclass, field, fields
from typing import Optional

from trl import ScriptArguments, SFTConfig

from .checks import RecipeError


TUNE_CHOICES = ("projector", "projector_and_language_model", "all")


@dataclass
class ChartWizScriptArguments(ScriptArguments):
    """
    Script arguments of `sft_chartwiz.py`: TRL's `ScriptArguments` (`dataset_name`, `dataset_config`,
    `dataset_train_split`, `dataset_test_split`) plus what to train and how much data to use.

    Args:
        dataset_name (`str`):
            A folder written by `chartwiz data build`, or a Hub dataset repo id.
        dataset_config (`str`, *optional*, defaults to `"finetune"`):
            `pretrain` (stage 1), `finetune` or `all` (stage 2, `all` adds the GPT question answering), or `gpt`.
        tune (`str`, *optional*, defaults to `"projector_and_language_model"`):
            What to train: `projector` (stage 1), `projector_and_language_model` (stage 2) or `all` (the vision
            encoder too). Everything else is frozen: no gradients, no optimizer state.
        dataset_tasks (`list[str]`, *optional*):
            Train and evaluate on the rows of these tasks only (the `task` column: `table`, `description`, `summary`,
            `qa`), for instance a stage of tables asked with their instruction before the instruction mix.
        projector_learning_rate (`float`, *optional*):
            The projector's own learning rate (the original's LoRA stage used 2e-5); defaults to `learning_rate`.
        max_train_samples (`int`, *optional*):
            Train on the first N rows of the train split only (smoke runs).
        max_eval_samples (`int`, *optional*):
            Evaluate on the first N rows of the test split only.
    """

    dataset_config: Optional[str] = field(
        default="finetune",
        metadata={"help": "Dataset config: pretrain (stage 1), finetune or all (stage 2), gpt."},
    )
    tune: str = field(
        default="projector_and_language_model",
        metadata={"help": "What to train; the rest is frozen.", "choices": list(TUNE_CHOICES)},
    )
    dataset_tasks: Optional[list[str]] = field(
        default=None, metadata={"help": "Use only the rows of these tasks (the `task` column), e.g. `table`."}
    )
    projector_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Learning rate of the projector (defaults to learning_rate)."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N rows of the train split (smoke runs)."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N rows of the test split."}
    )

    def __post_init__(self):
        # YAML values become parser defaults, which argparse does not check against `choices`.
        if self.tune not in TUNE_CHOICES:
            raise RecipeError(f"tune={self.tune!r} is not one of {', '.join(TUNE_CHOICES)}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name} must be at least 1, got {value}.")
        if self.dataset_tasks is not None and not self.dataset_tasks:
            raise RecipeError("dataset_tasks is empty: name at least one task, or leave it out to use every row.")


_SFT_CONFIG_FIELDS = {config_field.name for config_field in fields(SFTConfig)}


@dataclass
class ChartWizSFTConfig(SFTConfig):
    """
    TRL's `SFTConfig`, with the settings the recipes use under their transformers 4 names on transformers 5 too, whose
    `TrainingArguments` dropped them: `warmup_ratio` (5 reads a `warmup_steps` below 1 as that ratio),
    `group_by_length` (done by `ChartWizSFTTrainer`'s seeded length-grouped sampler on either major) and
    `overwrite_output_dir` (read by this script's run bookkeeping).
    """

    if "warmup_ratio" not in _SFT_CONFIG_FIELDS:
        warmup_ratio: float = field(default=0.0, metadata={"help": "Linear warmup over this fraction of the steps."})
    if "group_by_length" not in _SFT_CONFIG_FIELDS:
        group_by_length: bool = field(
            default=False, metadata={"help": "Group rows of similar length into batches (less padding)."}
        )
    if "overwrite_output_dir" not in _SFT_CONFIG_FIELDS:
        overwrite_output_dir: bool = field(
            default=False, metadata={"help": "Start over in an output_dir holding another run, removing all it left."}
        )

    def __post_init__(self):
        if "warmup_ratio" not in _SFT_CONFIG_FIELDS and self.warmup_ratio:
            if not 0 <= self.warmup_ratio < 1:
                raise RecipeError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()


__all__ = ["TUNE_CHOICES", "ChartWizSFTConfig", "ChartWizScriptArguments"]
