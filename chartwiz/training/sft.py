"""
The pieces of ChartWiz training that `recipes/sft_chartwiz.py` puts together around TRL's `SFTTrainer`: the script's
argument dataclasses, the checks made before any step runs (arguments, checkpoint, data, sequence lengths), the run
bookkeeping of `output_dir` (is it the same run? where to resume?), the model's trainable parts and LoRA config, the
collator, the seeded length-grouped sampler, the trainer and its model card. Needs the `[train]` extra (TRL).
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import numpy as np
import torch
from datasets import get_dataset_config_names, load_dataset
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from chartwiz.checkpoints import from_pretrained_complete
from chartwiz.errors import ChartWizValueError
from chartwiz.extras import MissingExtraError, missing_extra_message
from chartwiz.files import CHECKPOINT_FILES, clear_checkpoint_folder, write_json_atomic
from chartwiz.fingerprints import TRAINING_RUN_FILE, checkpoint_fingerprint, describe_changes, digest, tree_fingerprint
from chartwiz.inference.loading import check_checkpoint, load_processor
from chartwiz.names import DATASET_CONFIGS
from dataset_builder.card import read_build_fingerprint


try:
    from trl import ScriptArguments, SFTConfig, SFTTrainer, get_peft_config
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
except ModuleNotFoundError as error:  # the core install has no TRL: say which extra brings it, in one line
    if error.name is None or error.name.split(".")[0] != "trl":
        raise
    raise MissingExtraError(missing_extra_message("trl", "ChartWiz training (chartwiz.training.sft)")) from None


logger = logging.getLogger(__name__)

TUNE_CHOICES = ("projector", "projector_and_language_model", "all")
STAGES = {
    "projector": "stage 1, projector pretraining",
    "projector_and_language_model": "stage 2, finetuning of the projector and the language model",
    "all": "finetuning of every part (vision encoder, projector, language model)",
}
RUN_FILE = TRAINING_RUN_FILE
REQUIRED_COLUMNS = ("image", "prompt", "completion")
# LoRA never touches the vision encoder; the projector is trained in full and saved with the adapter instead.
LORA_EXCLUDED_MODULES = r".*\b(vision_tower|multi_modal_projector)\b.*"
LORA_MODULES_TO_SAVE = ["multi_modal_projector"]
# What is at the run's paths, beside the settings: a model or a dataset replaced in place makes another run too.
FINGERPRINT_KEYS = ("model_fingerprint", "dataset_fingerprint")
_CHECKPOINT = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


class RecipeError(ChartWizValueError):
    """Bad input found before training starts; `__main__` prints it as one line."""


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


################
# Output directory: which run it holds, where to resume
################
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
    keys = sorted(set(stored) | set(definition))
    changed = [key for key in keys if key not in FINGERPRINT_KEYS and stored.get(key) != definition.get(key)]
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


################
# Model
################
def load_model_and_processor(model_args, training_args):
    """
    The ChartWiz model (dtype and attention from `ModelConfig`) and its processor; refuses other checkpoints and
    checkpoints whose weights do not all fit the model.
    """
    name = model_args.model_name_or_path
    if not name:
        raise RecipeError("Set --model_name_or_path: a ChartWiz checkpoint (`chartwiz compose`, or stage 1's output).")
    hub_kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
    try:
        check_checkpoint(name, revision=model_args.model_revision)
    except (OSError, ValueError) as error:
        raise RecipeError(
            f"{error} Stage 1 starts from `chartwiz compose --vision <pix2struct> --text <causal LM> --out DIR`; "
            "stage 2 from stage 1's output."
        ) from None
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise RecipeError(f"{name} is not a loadable checkpoint: {error}") from error
    model_kwargs = {**hub_kwargs, "dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation}
    model_kwargs.update(training_args.model_init_kwargs or {})
    # The model is built here, so TRL must not try to apply these again (it warns when given both).
    training_args.model_init_kwargs = None
    try:
        model = from_pretrained_complete(AutoModelForImageTextToText, name, config=config, **model_kwargs)
    except ValueError as error:  # weights missing, unexpected or of another shape
        raise RecipeError(str(error)) from None
    # The fast tokenizer, as `chartwiz ask`, `infer` and `merge` load it: the ids trained on are the ids answered on.
    processor = load_processor(name, **hub_kwargs)
    return model, processor


def set_trainable(model, tune: str):
    """Freezes everything `tune` leaves out: frozen parameters get no gradients and no optimizer state."""
    model.requires_grad_(tune == "all")
    model.multi_modal_projector.requires_grad_(True)
    if tune == "projector_and_language_model":
        model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)


def chartwiz_lora_config(model_args):
    """TRL's LoRA config from `ModelConfig`, aimed at the language model's linear layers, projector saved in full."""
    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    return replace(
        peft_config,
        # PEFT's "all-linear" skips the LM head; the exclusion keeps the vision encoder and the projector out.
        target_modules=model_args.lora_target_modules or "all-linear",
        exclude_modules=LORA_EXCLUDED_MODULES,
        modules_to_save=model_args.lora_modules_to_save or LORA_MODULES_TO_SAVE,
    )


################
# Dataset
################
def _split(dataset, name: str, config: str, split: str, max_samples: Optional[int]):
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
    if max_samples is not None:
        data = data.select(range(min(max_samples, len(data))))
    return data


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
    train_dataset = _split(dataset, name, config, script_args.dataset_train_split, script_args.max_train_samples)
    eval_dataset = None
    if training_args.eval_strategy != "no" or training_args.do_eval:
        eval_dataset = _split(dataset, name, config, script_args.dataset_test_split, script_args.max_eval_samples)
    return train_dataset, eval_dataset


def tokenizer_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text it encodes: a BOS for Llama and Mistral tokenizers, none for most
    byte-level BPE ones."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next((index for index in range(len(full)) if full[index : index + len(plain)] == plain), 0)
    return full[:start]


class ChartWizVisionCollator(DataCollatorForVisionLanguageModeling):
    """
    TRL's vision collator, with the tokenizer's own prefix (a BOS) in front of each row. TRL tokenizes prompts without
    special tokens, expecting the chat template to write them; ChartWiz's templates do not, and `chartwiz.inference`
    encodes prompts as the tokenizer does, BOS included, as the original trained: so training rows get it here.
    """

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        prefix = tokenizer_prefix(self.processor.tokenizer)
        if not prefix:
            return batch
        rows = batch["input_ids"].shape[0]
        # [rows, len(prefix)] before the flushed-left rows
        ids = torch.tensor(prefix, dtype=batch["input_ids"].dtype).expand(rows, -1)
        batch["input_ids"] = torch.cat([ids, batch["input_ids"]], dim=1)
        batch["attention_mask"] = torch.cat([torch.ones_like(ids), batch["attention_mask"]], dim=1)
        batch["labels"] = torch.cat([torch.full_like(ids, -100), batch["labels"]], dim=1)
        if self.max_length is not None:
            for key in ("input_ids", "attention_mask", "labels"):
                batch[key] = batch[key][:, : self.max_length]
        return batch


class SequenceLengths:
    """
    The token count of each row as TRL's vision collator will build it (chat template, `<image>` expanded to the
    image's tokens), from the text alone: no image is decoded, so it costs one tokenizer pass over the dataset.
    """

    def __init__(self, processor):
        self.tokenizer = processor.tokenizer
        self.prefix_length = len(tokenizer_prefix(processor.tokenizer))
        self.chat_template = processor.chat_template
        self.image_token = processor.image_token
        self.image_seq_length = processor.image_seq_length

    def __call__(self, batch: dict) -> dict:
        prompts, completions, images = [], [], []
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            # What the collator does, with a stand-in image: the template writes one `<image>` per image entry.
            example = {
                "prompt": prepare_multimodal_messages(prompt, images=[None]),
                "completion": prepare_multimodal_messages(completion),
            }
            texts = apply_chat_template(example, self.tokenizer, chat_template=self.chat_template)
            prompts.append(texts["prompt"])
            completions.append(texts["completion"])
            images.append(texts["prompt"].count(self.image_token))
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        completion_ids = self.tokenizer(completions, add_special_tokens=False)["input_ids"]
        # `<image>` is one token in the text and `image_seq_length` tokens once the processor expands it.
        prompt_lengths = [
            self.prefix_length + len(ids) + count * (self.image_seq_length - 1)
            for ids, count in zip(prompt_ids, images)
        ]
        lengths = [length + len(ids) for length, ids in zip(prompt_lengths, completion_ids)]
        return {"prompt_length": prompt_lengths, "length": lengths}


def add_sequence_lengths(dataset, processor, column: str = "length", num_proc: Optional[int] = None):
    """`dataset` with a `column` of sequence lengths, and the prompts' lengths (image tokens included) apart."""
    measured = dataset.select_columns(["prompt", "completion"]).map(
        SequenceLengths(processor),
        batched=True,
        remove_columns=["prompt", "completion"],
        num_proc=num_proc,
        desc="Measuring sequence lengths",
    )
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, measured["length"]), np.asarray(measured["prompt_length"])


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


################
# Training
################
class SeededLengthGroupedSampler(LengthGroupedSampler):
    """
    transformers' `LengthGroupedSampler` with each epoch's order drawn from `(seed, epoch)` instead of the global
    random state, so that every rank and a resumed run draw the same order as the first run did.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class ChartWizSFTTrainer(SFTTrainer):
    """
    `SFTTrainer` with what ChartWiz training needs on top: the projector's own learning rate, length grouping of
    vision rows that resumes and shards deterministically, and a model card describing the stage.

    Args:
        projector_learning_rate (`float`, *optional*):
            Learning rate of the projector's parameters; `args.learning_rate` for everything else.
        card_details (`dict`, *optional*):
            What the model card says about the run: `stage`, `tune`, `base_model`, `dataset_name`,
            `dataset_config`, `train_rows`, `eval_rows`, `lora`.
    """

    def __init__(self, *args, projector_learning_rate: Optional[float] = None, card_details=None, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        self.card_details = dict(card_details or {})
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # TRL keeps only the conversation and image columns of a vision dataset; the sampler reads the lengths.
        if self.args.group_by_length and self.args.length_column_name not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.args.length_column_name]

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # Sorted in groups of whole optimizer steps, so the rows of a step do not depend on how many processes
        # share it: accelerate deals each process its slice of the same order.
        step_size = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(
            step_size * self.args.world_size,
            lengths=dataset[self.args.length_column_name],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        if self.projector_learning_rate is None or any(g.get("name") == "projector" for g in optimizer.param_groups):
            return optimizer
        # transformers gives every group `args.learning_rate`: move the projector's parameters to groups of their
        # own (same weight decay split) before the scheduler records each group's initial rate.
        named = self.model.named_parameters()
        projector = {id(p) for name, p in named if "multi_modal_projector" in name and p.requires_grad}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in projector]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in projector]
                settings = {key: value for key, value in group.items() if key != "params"}
                optimizer.add_param_group(
                    {**settings, "params": moved, "lr": self.projector_learning_rate, "name": "projector"}
                )
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def create_model_card(
        self,
        model_name: Optional[str] = None,
        dataset_name: Optional[str] = None,
        tags: Optional[list[str]] = None,
        **kwargs,
    ):
        """
        Writes `README.md` in `output_dir` (main process only): TRL's card (metadata, framework versions, tracking
        links, citations) with ChartWiz's own parts in it, see `add_chartwiz_sections`.
        """
        if not self.is_world_process_zero():
            return
        name = model_name or os.path.basename(os.path.normpath(self.args.output_dir))
        dataset = _hub_id(dataset_name or self.card_details.get("dataset_name"))
        chartwiz_tags = ["chartwiz", "chart-question-answering", f"tune-{self.card_details.get('tune')}"]
        super().create_model_card(model_name=name, dataset_name=dataset, tags=[*chartwiz_tags, *(tags or [])])
        path = os.path.join(self.args.output_dir, "README.md")
        add_chartwiz_sections(ModelCard.load(path), self, name).save(path)


def _hub_id(name: Optional[str]) -> Optional[str]:
    return name if name and not os.path.exists(name) and name.count("/") == 1 else None


# TRL's card template (trl/templates/lm_model_card.md) has these sections; ours go around them.
_TRL_QUICK_START = re.compile(r"^## Quick start\n.*?(?=^## )", flags=re.DOTALL | re.MULTILINE)
_TRL_VERSIONS = "### Framework versions"
# The template links the base model to the Hub even when it was a local folder, which TRL then reports as None.
_TRL_NO_BASE_MODEL = "[None](https://huggingface.co/None)"


def add_chartwiz_sections(card: ModelCard, trainer: ChartWizSFTTrainer, model_name: str) -> ModelCard:
    """
    What TRL's model card lacks for a ChartWiz run, added to it: the card's language and pipeline tag, the base parts
    (stage, what was trained, where it started), the dataset and its config, the settings and losses of the run, and
    a quick start that loads the model with its image (TRL's is a text-generation pipeline, which cannot take one).
    """
    details, args = trainer.card_details, trainer.args
    base_model = details.get("base_model")
    card.data.language = ["ko"]
    card.data.pipeline_tag = "image-text-to-text"
    if details.get("lora"):
        card.data.library_name = "peft"
    if _hub_id(base_model):
        card.data.base_model = _hub_id(base_model)

    losses = {"train_loss": None, "eval_loss": None}
    for entry in trainer.state.log_history:
        losses.update({key: entry[key] for key in losses if key in entry})
    world_size = args.world_size
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    rows = [
        ("stage", details.get("stage")),
        ("trained", details.get("tune")),
        ("started from", base_model),
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
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    results = "\n".join(f"| {key} | {value:.4f} |" for key, value in losses.items() if value is not None)
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
    quick_start = f"{about}\n\n## Quick start\n\n{usage}\n\n"
    training = (
        f"### Settings\n\n| setting | value |\n| --- | --- |\n{table}\n\n"
        f"### Results\n\n| metric | value |\n| --- | --- |\n{results or '| (none logged) | |'}\n\n"
    )
    text = card.text.replace(_TRL_NO_BASE_MODEL, f"`{base_model}`")
    text, replaced = _TRL_QUICK_START.subn(lambda _: quick_start, text, count=1)
    if not replaced:
        text = f"{text.rstrip()}\n\n{quick_start}"
    if _TRL_VERSIONS in text:
        text = text.replace(_TRL_VERSIONS, f"{training}{_TRL_VERSIONS}", 1)
    else:
        text = f"{text.rstrip()}\n\n## Training\n\n{training}"
    card.text = text
    return card


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


def vision_collator(processor, training_args) -> "ChartWizVisionCollator":
    """The collator the recipes train with: TRL's vision one (BOS in front), loss on the completions only."""
    return ChartWizVisionCollator(
        processor=processor,
        max_length=training_args.max_length,
        completion_only_loss=True,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
        dataset_text_field=training_args.dataset_text_field,
        assistant_only_loss=training_args.assistant_only_loss,
    )


__all__ = [
    "ChartWizSFTConfig",
    "ChartWizSFTTrainer",
    "ChartWizScriptArguments",
    "ChartWizVisionCollator",
    "RUN_FILE",
    "RecipeError",
    "SeededLengthGroupedSampler",
    "SequenceLengths",
    "add_sequence_lengths",
    "add_chartwiz_sections",
    "card_details",
    "check_arguments",
    "check_lengths",
    "checkpoint_problem",
    "chartwiz_lora_config",
    "find_resume_checkpoint",
    "load_chart_splits",
    "load_model_and_processor",
    "measure_and_check_lengths",
    "newest_complete_checkpoint",
    "run_definition",
    "set_trainable",
    "start_run",
    "tokenizer_prefix",
    "vision_collator",
]
