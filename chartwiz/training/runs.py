"""
The run bookkeeping of `output_dir`: which run it holds (the settings and the fingerprints of the model and the data,
in `chartwiz_run.json`), whether this invocation is the same run, and the newest complete checkpoint to resume from.
The Trainer resumes from whatever `output_dir` holds; neither it nor TRL records what a run was.
"""

import json
import logging
import os
import re
from typing import Optional

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from chartwiz.batch.run_store import changed_settings
from chartwiz.files import CHECKPOINT_FILES, clear_checkpoint_folder, write_json_atomic
from chartwiz.fingerprints import TRAINING_RUN_FILE, checkpoint_fingerprint, describe_changes, digest, tree_fingerprint
from dataset_builder.card import read_build_fingerprint

from .checks import RecipeError


logger = logging.getLogger(__name__)

# Where the run is recorded in `output_dir`.
RUN_FILE = TRAINING_RUN_FILE
# What is at the run's paths, beside the settings: a model or a dataset replaced in place makes another run too.
FINGERPRINT_KEYS = ("model_fingerprint", "dataset_fingerprint")
_CHECKPOINT = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def _normalized(name: Optional[str]) -> Optional[str]:
    return os.path.abspath(name) if name is not None and os.path.exists(name) else name


def dataset_fingerprint(name: Optional[str], config: Optional[str]):
    """The card's build fingerprint of a `chartwiz data build` folder's config, else its files' (None for the Hub)."""
    if not name or not os.path.isdir(name):
        return None
    return read_build_fingerprint(name, config) or digest(tree_fingerprint(name))


def run_definition(script_args, model_args) -> dict:
    """
    What makes two invocations the same run, so that resuming one from the other's checkpoints makes sense: the
    settings, and the fingerprints of the model folder and the dataset they name. (The Trainer resumes from whatever
    `output_dir` holds; neither it nor TRL records what a run was.)
    """
    model = model_args.model_name_or_path
    definition = {
        "model_name_or_path": _normalized(model_args.model_name_or_path),
        "model_revision": model_args.model_revision,
        "dataset_name": _normalized(script_args.dataset_name),
        "dataset_config": script_args.dataset_config,
        "dataset_train_split": script_args.dataset_train_split,
        "max_train_samples": script_args.max_train_samples,
        "dataset_tasks": sorted(script_args.dataset_tasks) if script_args.dataset_tasks else None,
        "tune": script_args.tune,
        "use_peft": model_args.use_peft,
        "model_fingerprint": checkpoint_fingerprint(model) if model and os.path.isdir(model) else None,
        "dataset_fingerprint": dataset_fingerprint(script_args.dataset_name, script_args.dataset_config),
    }
    if model_args.use_peft:
        definition.update(
            lora_r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_target_modules=model_args.lora_target_modules,
            lora_modules_to_save=model_args.lora_modules_to_save,
        )
    return definition


def checkpoint_problem(checkpoint: str) -> Optional[str]:
    """
    Why a Trainer checkpoint cannot be resumed from, or None: a complete one has a trainer state and weights that
    load. The Trainer writes the trainer state last, so a run killed while saving leaves a checkpoint without it or
    with a torn weights file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as file:
            json.load(file)
    except FileNotFoundError:
        return "it has no trainer_state.json"
    except (OSError, ValueError) as error:
        return f"its trainer_state.json does not load ({error})"
    weights = sorted(name for name in os.listdir(checkpoint) if name.endswith(".safetensors"))
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as file:
            shards = sorted(set(json.load(file).get("weight_map", {}).values()))
        missing = [name for name in shards if name not in weights]
        if missing:
            return f"its weights shard {missing[0]} is missing"
    if not weights:
        return "it holds no safetensors weights"
    for name in weights:
        try:
            # Opening checks the header against the file's length: a file cut short does not open.
            with safe_open(os.path.join(checkpoint, name), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            return f"its {name} does not load ({error})"
    return None


def newest_complete_checkpoint(output_dir: str) -> Optional[str]:
    """
    The newest checkpoint of `output_dir` that `checkpoint_problem` finds complete; the newer ones are named.
    (transformers' `get_last_checkpoint` takes the highest step whatever state it is in, so a kill while saving
    would make every rerun fail on it.)
    """
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.fullmatch(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping %s, which a run stopped while saving: %s", path, problem)
    if steps:
        logger.warning("No complete checkpoint in %s: training starts over", output_dir)
    return None


def _fingerprint_change(key: str, stored, current, definition: dict) -> str:
    if key == "model_fingerprint":
        files = describe_changes(stored or {}, current or {}) if stored and current else ""
        return f"the files of {definition['model_name_or_path']} changed" + (f" ({files})" if files else "")
    return f"the dataset {definition['dataset_name']} ({definition['dataset_config']}) was built again"


def find_resume_checkpoint(training_args, definition: dict) -> Optional[str]:
    """
    The checkpoint to resume from (`resume_from_checkpoint`, else the newest complete one in `output_dir`), or None to
    start over; refuses an `output_dir` that holds another run, or the same settings on a model or dataset that changed
    since, unless `overwrite_output_dir` is set.
    """
    output_dir = training_args.output_dir
    explicit = training_args.resume_from_checkpoint
    if isinstance(explicit, str) and os.path.isdir(explicit) and checkpoint_problem(explicit):
        raise RecipeError(f"resume_from_checkpoint {explicit} cannot be resumed from: {checkpoint_problem(explicit)}.")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return explicit
    run_file = os.path.join(output_dir, RUN_FILE)
    names = set(os.listdir(output_dir))
    if not os.path.isfile(run_file) and not CHECKPOINT_FILES & names:
        # Starting over empties the folder (`start_run`): never one of other files.
        raise RecipeError(
            f"output_dir {output_dir} is not empty and has no {RUN_FILE}, so it is not a run of this script, nor a "
            "saved model that --overwrite_output_dir would replace. Choose another --output_dir."
        )
    if training_args.overwrite_output_dir:
        return explicit
    if not os.path.isfile(run_file):
        raise RecipeError(
            f"output_dir {output_dir} holds a saved model but no {RUN_FILE}, so it is not a run of this script. "
            "Choose another --output_dir, or pass --overwrite_output_dir to replace what it holds."
        )
    with open(run_file, encoding="utf-8") as file:
        stored = json.load(file)
    changed = [key for key in changed_settings(stored, definition) if key not in FINGERPRINT_KEYS]
    if changed:
        differences = "; ".join(f"{key}: {stored.get(key)!r} there, {definition.get(key)!r} now" for key in changed)
        raise RecipeError(
            f"output_dir {output_dir} holds a different run ({differences}). Pass --overwrite_output_dir to start "
            "over, or choose another --output_dir."
        )
    # A run recorded before fingerprints were has none to compare.
    moved = [key for key in FINGERPRINT_KEYS if key in stored and stored[key] != definition.get(key)]
    if moved:
        reasons = "; ".join(_fingerprint_change(key, stored[key], definition.get(key), definition) for key in moved)
        raise RecipeError(
            f"output_dir {output_dir} holds a run of the same settings, but {reasons} since it started: its "
            "checkpoints belong to the old one. Pass --overwrite_output_dir to start over, or choose another "
            "--output_dir."
        )
    return explicit or newest_complete_checkpoint(output_dir)


def start_run(training_args, definition: dict):
    """Records the run in `output_dir` (main process); starting over removes the old run's checkpoints."""
    if training_args.process_index != 0:
        return
    output_dir = training_args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    if training_args.overwrite_output_dir and os.listdir(output_dir):
        # Everything of the old run goes: its checkpoints would be picked by a later resume, and its final files (an
        # adapter_config.json beside a full model's weights) would be loaded with the new run's.
        removed = clear_checkpoint_folder(output_dir)
        logger.warning("overwrite_output_dir: removed %s from %s", ", ".join(removed), output_dir)
    write_json_atomic(os.path.join(output_dir, RUN_FILE), definition)


__all__ = [
    "RUN_FILE",
    "checkpoint_problem",
    "dataset_fingerprint",
    "find_resume_checkpoint",
    "newest_complete_checkpoint",
    "run_definition",
    "start_run",
]
