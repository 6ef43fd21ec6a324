"""The splits a run trains and evaluates on, from a `chartwiz data build` folder or a Hub dataset, checked first."""

import os
from typing import Optional

from datasets import get_dataset_config_names, load_dataset

from chartwiz.names import DATASET_CONFIGS

from .checks import RecipeError


REQUIRED_COLUMNS = ("image", "prompt", "completion")


def _split(dataset, name: str, config: str, split: str, max_samples: Optional[int], tasks: Optional[list]):
    if split not in dataset:
        raise RecipeError(f"Dataset {name} ({config}) has no split {split!r}; it has {', '.join(dataset)}.")
    data = dataset[split]
    if len(data) == 0:
        raise RecipeError(f"Split {split!r} of dataset {name} ({config}) is empty: nothing to train or evaluate on.")
    missing = [column for column in REQUIRED_COLUMNS if column not in data.column_names]
    if missing:
        raise RecipeError(
            f"Split {split!r} of dataset {name} ({config}) lacks the columns {missing}: ChartWiz trains on "
            "prompt-completion rows with an image, as `chartwiz data build` writes them."
        )
    if tasks:
        data = _rows_of_tasks(data, name, config, split, tasks)
    if max_samples is not None:
        data = data.select(range(min(max_samples, len(data))))
    return data


def _rows_of_tasks(data, name: str, config: str, split: str, tasks: list):
    if "task" not in data.column_names:
        raise RecipeError(
            f"--dataset_tasks needs a `task` column, and split {split!r} of dataset {name} ({config}) has none."
        )
    present = set(data.unique("task"))
    unknown = sorted(set(tasks) - present)
    if unknown:
        raise RecipeError(
            f"Split {split!r} of dataset {name} ({config}) has no rows of the tasks {unknown} (it has "
            f"{', '.join(sorted(present))}): check --dataset_tasks and --dataset_config."
        )
    wanted = set(tasks)
    return data.filter(lambda task: task in wanted, input_columns="task", desc=f"Keeping the {split} rows of {tasks}")


def load_chart_splits(script_args, training_args):
    """The train split and, when evaluating, the test split of a `chartwiz data build` folder or a Hub dataset."""
    name, config = script_args.dataset_name, script_args.dataset_config
    if not name:
        raise RecipeError("Set --dataset_name: a folder written by `chartwiz data build`, or a Hub dataset repo id.")
    if os.path.isdir(name):
        available = get_dataset_config_names(name)
        if config not in available:
            remedy = (
                f"Build it with `chartwiz data build --configs {config} ...` or choose"
                if config in DATASET_CONFIGS
                else "Choose"
            )
            raise RecipeError(
                f"Dataset folder {name} has no {config!r} config (it has {', '.join(available)}). {remedy} one of "
                "those with --dataset_config."
            )
    elif os.path.exists(name):
        raise RecipeError(f"--dataset_name {name} is a file; give the folder `chartwiz data build` wrote.")
    try:
        dataset = load_dataset(name, config)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if os.path.isdir(name):
            raise RecipeError(f"Dataset folder {name} ({config}) does not load: {reason}") from None
        raise RecipeError(
            f"Dataset {name} ({config}) cannot be loaded: no such folder here, and as a Hub dataset: {reason}. Build "
            f"it with `chartwiz data build --out {name} ...`, or pass --dataset_name."
        ) from None
    tasks = script_args.dataset_tasks
    train_dataset = _split(
        dataset, name, config, script_args.dataset_train_split, script_args.max_train_samples, tasks
    )
    eval_dataset = None
    if training_args.eval_strategy != "no" or training_args.do_eval:
        eval_dataset = _split(
            dataset, name, config, script_args.dataset_test_split, script_args.max_eval_samples, tasks
        )
    return train_dataset, eval_dataset


__all__ = ["load_chart_splits"]
