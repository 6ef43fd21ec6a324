"""
The checks made before any training step runs, and the error they raise: the combinations of options this script
cannot train, and rows longer than the model can take. Loading the checkpoint (`model.py`), the data (`data.py`) and
resuming a run (`runs.py`) refuse what they cannot use with the same `RecipeError`.
"""

import logging
from typing import Optional

import numpy as np

from chartwiz.errors import ChartWizValueError

from .collator import add_sequence_lengths


logger = logging.getLogger(__name__)


class RecipeError(ChartWizValueError):
    """Bad input found before training starts; `__main__` prints it as one line."""


def check_arguments(script_args, training_args, model_args):
    """The combinations of options this script cannot train, refused before anything is loaded."""
    if script_args.dataset_streaming:
        raise RecipeError(
            "dataset_streaming is not supported: every row's length is measured before training (context check, "
            "length grouping), which needs a map-style dataset. Parquet folders are memory-mapped, not loaded."
        )
    if model_args.use_peft and script_args.tune != "projector_and_language_model":
        raise RecipeError(
            f"use_peft with tune={script_args.tune!r}: LoRA adapts the language model and trains the projector in "
            "full, never the vision encoder; use tune=projector_and_language_model."
        )
    if training_args.completion_only_loss is False:
        raise RecipeError(
            "completion_only_loss=False would train on prompts, image positions included (TRL's fused loss reads "
            "the labels as they are); ChartWiz trains on the answers only."
        )


def _rows(dataset, indices, lengths) -> str:
    ids = dataset.select_columns(["id"]) if "id" in dataset.column_names else None
    shown = [f"row {index}" + (f" (id {ids[int(index)]['id']})" if ids else "") for index in indices[:3]]
    return ", ".join(f"{row}: {int(lengths[index])} tokens" for row, index in zip(shown, indices))


def check_lengths(dataset, prompt_lengths, split: str, context: int, max_length: Optional[int], column="length"):
    """
    Refuses rows the model cannot take: longer than its context when nothing truncates them to it, or whose prompt
    (image tokens included) `max_length` would cut. Rows that `max_length` truncates are counted and reported.
    """
    lengths = np.asarray(dataset[column])
    if max_length is None or max_length > context:
        too_long = np.flatnonzero(lengths > context)
        if too_long.size:
            raise RecipeError(
                f"{too_long.size} {split} rows are longer than the language model's context of {context} tokens "
                f"(image tokens included), e.g. {_rows(dataset, too_long, lengths)}. Set --max_length {context} or "
                "less to truncate them, use fewer image patches, or leave those rows out."
            )
        return
    cut_prompts = np.flatnonzero(prompt_lengths > max_length)
    if cut_prompts.size:
        raise RecipeError(
            f"{cut_prompts.size} {split} rows have a prompt (image tokens included) longer than max_length="
            f"{max_length}, which would cut into it, e.g. {_rows(dataset, cut_prompts, prompt_lengths)}. Raise "
            f"--max_length (the context is {context}) or leave those rows out."
        )
    truncated = np.flatnonzero(lengths > max_length)
    if truncated.size:
        logger.warning(
            "%d of %d %s rows are longer than max_length=%d and lose the end of their answer, e.g. %s.",
            truncated.size,
            len(lengths),
            split,
            max_length,
            _rows(dataset, truncated, lengths),
        )


def measure_and_check_lengths(train_dataset, eval_dataset, processor, training_args, context: int):
    """
    Adds each row's sequence length (`length_column_name`) to both splits and refuses rows the model cannot take
    (`check_lengths`). The main process measures first and caches; the others read its cache.
    """
    column, num_proc = training_args.length_column_name, training_args.dataset_num_proc
    with training_args.main_process_first(desc="measuring sequence lengths"):
        train_dataset, train_prompts = add_sequence_lengths(train_dataset, processor, column, num_proc)
        if eval_dataset is not None:
            eval_dataset, eval_prompts = add_sequence_lengths(eval_dataset, processor, column, num_proc)
    check_lengths(train_dataset, train_prompts, "train", context, training_args.max_length, column)
    if eval_dataset is not None:
        check_lengths(eval_dataset, eval_prompts, "eval", context, training_args.max_length, column)
    return train_dataset, eval_dataset


__all__ = ["RecipeError", "check_arguments", "check_lengths", "measure_and_check_lengths"]
