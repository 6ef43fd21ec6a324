"""Converts checkpoints of the original ChartWiz (a LLaVA fork) into ChartWiz checkpoints for the Auto classes.

The original saved three kinds of checkpoints, all converted here:

- a full model: `config.json` (`model_type` `llava_llama`, `llava_mistral`, `llava_qwen` or `llava_gemma`, plus the
  `mm_*` keys) with `.bin` or safetensors weights, possibly sharded;
- a stage-1 run: `config.json` and `mm_projector.bin` (the projector only), joined with the base language model;
- a LoRA run: a PEFT adapter (`adapter_config.json`, `adapter_model.bin`) and `non_lora_trainables.bin` (the
  projector), on top of the base language model; merged with PEFT, or kept as an adapter on the converted base.

The original spliced the projected patches in place of one sentinel id (-200) and kept all `max_patches` encoder
outputs, padding patches included: ChartWiz's own layout with a real `<image>` token repeated once per patch, so a
converted model computes the same logits as the original for the same prompt and patches.

One module, not several: as transformers' `convert_*_to_hf.py` scripts, the conversion is one file to read from the
original's keys to ChartWiz's, runnable with `python -m`.
"""

import argparse
import inspect
import json
import logging
import os
import pickle
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from accelerate import init_empty_weights
from huggingface_hub import HfApi, load_state_dict_from_file
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from transformers import AutoTokenizer, Pix2StructVisionConfig, PretrainedConfig
from transformers.utils import cached_file

from chartwiz.checkpoints import reading_checkpoint
from chartwiz.errors import ChartWizError, ChartWizFileNotFoundError, ChartWizOSError, ChartWizValueError
from chartwiz.files import OVERWRITE_HELP, replacing_folder

from .chat_templates import CHAT_TEMPLATES
from .compose import add_image_token, build_processor, chartwiz_generation_config
from .configuration_chartwiz import ChartWizConfig, projector_depth
from .image_processing_chartwiz import DEPLOT_HEADER_TEXT
from .modeling_chartwiz import ChartWizForConditionalGeneration


logger = logging.getLogger(__name__)

EPILOG_TXT = """Examples:

    # a full checkpoint (the vision tower's config, and its weights if the checkpoint lacks them, from --vision)
    python -m chartwiz_hf.convert_chartwiz_llava_to_hf --llava checkpoints/llava-synatra-1.3b \\
        --vision nuua/ko-deplot --out chartwiz-1.3b

    # a stage-1 run: the projector side file on the base language model
    python -m chartwiz_hf.convert_chartwiz_llava_to_hf --llava checkpoints/pretrain \\
        --mm-projector checkpoints/pretrain/mm_projector.bin --text maywell/Synatra-42dot-1.3B --out chartwiz-stage1

    # a LoRA run, merged (add --keep-adapter to keep it as a PEFT adapter in OUT/adapter)
    python -m chartwiz_hf.convert_chartwiz_llava_to_hf --llava checkpoints/lora --lora checkpoints/lora \\
        --text maywell/Synatra-7B-v0.3-dpo --template vicuna_v1 --out chartwiz-7b
"""

# The original's language-model classes and the transformers model type each one extends.
LLAVA_MODEL_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2", "llava_gemma": "gemma"}
_UNSUPPORTED_MODEL_TYPES = {
    "llava_exaone": (
        "its language model is EXAONE 3.x (model_type 'exaone', remote code with its own weight names); "
        "transformers 4.57 only ships EXAONE 4.0 ('exaone4'), a different architecture"
    ),
}

# Keys of the original config.json that describe its multimodal wiring or its training run, not the language model
# (besides every `mm_*` key).
_LLAVA_ONLY_CONFIG_KEYS = (
    "use_mm_proj",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "pretrain_mm_mlp_adapter",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_padding_side",
    "tokenizer_model_max_length",
)
# Saving details that the converted checkpoint writes afresh.
_SAVING_CONFIG_KEYS = ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "auto_map")

WEIGHTS_NAMES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
ADAPTER_WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")

_VISION_PREFIX = "model.vision_tower.vision_tower."
_PROJECTOR_SEQUENTIAL = re.compile(r"^model\.mm_projector\.(\d+)\.(weight|bias)$")
_PROJECTOR_LINEAR = re.compile(r"^model\.mm_projector\.(weight|bias)$")
_PEFT_PREFIX = "base_model.model."
# Keys the original saved that ChartWiz has no use for, with the reason.
_IGNORED_LLAVA_KEYS = (
    (re.compile(r"\.inv_freq$"), "rotary embedding buffer, recomputed from the config"),
    (
        re.compile(r"^model\.image_newline$"),
        "newline embedding of LLaVA's 'unpad' patch merging, which the original's Pix2Struct path never used",
    ),
)


@dataclass
class LlavaSettings:
    """
    The multimodal settings of an original `config.json`, taken out of the language model's config.

    Args:
        model_type (`str`): The original model type, e.g. `llava_mistral`.
        vision_tower (`str`, *optional*): `mm_vision_tower`, the Pix2Struct checkpoint the original encoded with.
        projector_type (`str`): `mm_projector_type` (`linear`, `mlp2x_gelu`, ...).
        mm_hidden_size (`int`, *optional*): The vision hidden size the projector was built for.
        model_max_length (`int`, *optional*): `tokenizer_model_max_length`, the training length.
        dropped (`dict`): The LLaVA-only keys left out of the converted config, with their values.
    """

    model_type: str
    vision_tower: Optional[str]
    projector_type: str
    mm_hidden_size: Optional[int]
    model_max_length: Optional[int]
    dropped: dict = field(default_factory=dict)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _resolve(name_or_path: str, filename: str) -> Optional[str]:
    """Path of `filename` in a local folder or a Hub repo (downloaded to the cache), or None when it has none."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    # Checked here: transformers 5 turns the Hub's validation error into a message about repo ids of its own.
    try:
        validate_repo_id(name_or_path)
    except HFValidationError as error:
        raise ChartWizFileNotFoundError(f"{name_or_path}: no such folder, and not a Hub repo id") from error
    return cached_file(
        name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def _state_dict_loader_options(path: str) -> dict:
    # huggingface_hub 1.x and later refuse pickles unless told `safe=False`; the original's checkpoints are `.bin`
    # files, read below with `weights_only=True`. `safe` stays on for safetensors files, so a pickle named
    # `.safetensors` is never unpickled. Older releases (0.36, the transformers 4.57 lane) have no `safe` and decide
    # by the file's suffix alone.
    if "safe" in inspect.signature(load_state_dict_from_file).parameters:
        return {"safe": path.endswith(".safetensors")}
    return {}


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """
    The tensors of one weights file, read by huggingface_hub's `load_state_dict_from_file`: safetensors, or a PyTorch
    pickle read with `torch.load(weights_only=True)`, which refuses any object but tensors and plain containers
    instead of running it. Its errors are rewrapped into one line naming the file.

    Raises:
        `ValueError` naming the file when it holds anything but a flat mapping of names to tensors.
    """
    options = _state_dict_loader_options(path)
    if path.endswith(".safetensors"):
        try:
            return load_state_dict_from_file(path, map_location="cpu", weights_only=True, **options)
        except (SafetensorError, OSError, ValueError) as error:
            # huggingface_hub wraps safetensors' error in advice about pickles; the cause says what is wrong.
            cause = error.__cause__ if isinstance(error.__cause__, SafetensorError) else error
            raise ChartWizValueError(f"{path}: not a readable safetensors file ({_one_line(cause)})") from error
    try:
        state_dict = load_state_dict_from_file(path, map_location="cpu", weights_only=True, **options)
    except pickle.UnpicklingError as error:
        # torch explains how to load it unsafely around the one line saying what it found; keep that line.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        found = [
            line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))
        ]
        raise ChartWizValueError(
            f"{path}: holds objects other than tensors; refusing to unpickle it ({' '.join(found) or lines[0]})"
        ) from error
    except (RuntimeError, EOFError) as error:
        raise ChartWizValueError(f"{path}: not a readable PyTorch weights file ({_one_line(error)})") from error
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise ChartWizValueError(
            f"{path}: expected a mapping of parameter names to tensors, found {type(state_dict).__name__}"
        )
    return state_dict


def load_checkpoint_weights(name_or_path: str) -> Optional[dict[str, torch.Tensor]]:
    """
    All weights of a checkpoint folder or Hub repo (safetensors first, then `.bin`; sharded or not), or None when it
    has no weights files.
    """
    # The index is read here rather than by huggingface_hub's `load_torch_model` or transformers'
    # `load_sharded_checkpoint`: those load shards into a model of the same keys, and the original's keys are
    # renamed (and checked shard by shard) before any ChartWiz model exists.
    for filename in WEIGHTS_NAMES:
        path = _resolve(name_or_path, filename)
        if path is None:
            continue
        if not filename.endswith(".index.json"):
            return load_weights_file(path)
        with open(path, encoding="utf-8") as file:
            weight_map = json.load(file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ChartWizValueError(f"{path}: no weight_map in the index")
        state_dict = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = _resolve(name_or_path, shard)
            if shard_path is None:
                raise ChartWizValueError(f"{path}: lists the shard {shard}, which {name_or_path} does not have")
            state_dict.update(load_weights_file(shard_path))
        missing = sorted(set(weight_map) - set(state_dict))
        if missing:
            raise ChartWizValueError(
                f"{path}: lists {missing[0]} in {weight_map[missing[0]]}, but that shard lacks it"
            )
        return state_dict
    return None


def read_llava_config(llava_path: str) -> tuple[dict, LlavaSettings]:
    """
    Splits the original `config.json` into the language model's config (a dict whose `model_type` is the
    transformers one) and the multimodal settings. Raises `ValueError` for what ChartWiz cannot reproduce.
    """
    path = _resolve(llava_path, "config.json")
    if path is None:
        where = (
            "" if os.path.isdir(llava_path) else " (not a local folder; on the Hub, not found or not cached offline)"
        )
        raise ChartWizValueError(
            f"{llava_path}: no config.json{where}; the original saved one beside every checkpoint"
        )
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except json.JSONDecodeError as error:
        raise ChartWizValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ChartWizValueError(f"{path}: expected a JSON object")

    model_type = config.get("model_type")
    if model_type in _UNSUPPORTED_MODEL_TYPES:
        raise ChartWizValueError(
            f"{path}: model_type {model_type!r} is not supported: {_UNSUPPORTED_MODEL_TYPES[model_type]}. "
            f"Supported: {', '.join(LLAVA_MODEL_TYPES)}."
        )
    if model_type not in LLAVA_MODEL_TYPES:
        raise ChartWizValueError(
            f"{path}: model_type {model_type!r} is not an original ChartWiz model; expected one of "
            f"{', '.join(LLAVA_MODEL_TYPES)}."
        )
    if config.get("mm_use_im_start_end"):
        raise ChartWizValueError(
            f"{path}: mm_use_im_start_end is true; ChartWiz places the patches without image start/end tokens, "
            "as every original ChartWiz run did."
        )
    projector_type = config.get("mm_projector_type", "linear")
    try:
        projector_depth(projector_type)
    except ValueError as error:
        raise ChartWizValueError(f"{path}: mm_projector_type: {error}") from error

    dropped = {key: config.pop(key) for key in list(config) if key.startswith("mm_") or key in _LLAVA_ONLY_CONFIG_KEYS}
    for key in _SAVING_CONFIG_KEYS:
        config.pop(key, None)
    config["model_type"] = LLAVA_MODEL_TYPES[model_type]
    # Training saves use_cache=False (gradient checkpointing); generation wants the cache.
    config["use_cache"] = True
    settings = LlavaSettings(
        model_type=model_type,
        vision_tower=dropped.get("mm_vision_tower"),
        projector_type=projector_type,
        mm_hidden_size=dropped.get("mm_hidden_size"),
        model_max_length=dropped.get("tokenizer_model_max_length"),
        dropped=dropped,
    )
    return config, settings


def llava_key_to_chartwiz(key: str) -> tuple[Optional[str], Optional[str]]:
    """
    Where a weight of the original model goes in ChartWiz: `(name, None)`, or `(None, reason)` for a weight ChartWiz
    has no use for, or `(None, None)` for a name the original never had.
    """
    for pattern, reason in _IGNORED_LLAVA_KEYS:
        if pattern.search(key):
            return None, reason
    if key.startswith(_VISION_PREFIX):
        return "model.vision_tower." + key[len(_VISION_PREFIX) :], None
    match = _PROJECTOR_SEQUENTIAL.match(key)
    if match:
        index, kind = int(match.group(1)), match.group(2)
        # nn.Sequential(Linear, GELU, Linear, GELU, ...): linears at even indices, parameter-free GELUs between.
        if index % 2:
            return None, None
        return f"model.multi_modal_projector.linear_{index // 2 + 1}.{kind}", None
    match = _PROJECTOR_LINEAR.match(key)
    if match:
        return f"model.multi_modal_projector.linear_1.{match.group(1)}", None
    if key.startswith("model.mm_projector.") or key.startswith("model.vision_tower."):
        return None, None
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :], None
    if key.startswith("lm_head."):
        return key, None
    return None, None


def _pix2struct_key_mapper(full_model: bool) -> Callable[[str], tuple[Optional[str], Optional[str]]]:
    def mapper(key: str) -> tuple[Optional[str], Optional[str]]:
        if not full_model:
            return "model.vision_tower." + key, None
        if key.startswith("encoder."):
            return "model.vision_tower." + key[len("encoder.") :], None
        if key.startswith("decoder."):
            return None, "Pix2Struct's text decoder; ChartWiz keeps the encoder only"
        return None, None

    return mapper


def _key_pattern(key: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", key)


class WeightCollector:
    """
    Gathers ChartWiz's weights from the original's files and accounts for every key: each is used, superseded by a
    later source, or left out with a reason; a key the original never had is an error naming it.
    """

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.origins: dict[str, tuple[str, str]] = {}
        self.ignored: list[tuple[str, str, str]] = []
        self.used: dict[str, int] = defaultdict(int)

    def add(self, source: str, state_dict: dict, mapper=llava_key_to_chartwiz, strip_prefix: str = "") -> None:
        unknown = []
        for key, tensor in state_dict.items():
            original_key = key[len(strip_prefix) :] if strip_prefix and key.startswith(strip_prefix) else key
            target, reason = mapper(original_key)
            if target is None:
                if reason is None:
                    unknown.append(key)
                else:
                    self.ignored.append((source, key, reason))
                continue
            if target in self.origins:
                self.ignored.append((*self.origins[target], f"superseded by {source}"))
                self.used[self.origins[target][0]] -= 1
            self.tensors[target] = tensor
            self.origins[target] = (source, key)
            self.used[source] += 1
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise ChartWizValueError(
                f"{source}: unexpected key{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:3])}{more}: not a "
                "weight of the original ChartWiz model"
            )

    def has_prefix(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.tensors)

    def ignore(self, target: str, reason: str) -> None:
        source, key = self.origins.pop(target)
        del self.tensors[target]
        self.used[source] -= 1
        self.ignored.append((source, key, reason))

    def check_against(self, expected: dict[str, torch.Size], optional: tuple[str, ...] = ()) -> None:
        """Every expected weight present with its shape; nothing else."""
        extra = sorted(set(self.tensors) - set(expected))
        if extra:
            source, key = self.origins[extra[0]]
            raise ChartWizValueError(
                f"{source}: {key} (ChartWiz name {extra[0]}) has no place in a model with this config"
                + (f"; {len(extra) - 1} more like it" if len(extra) > 1 else "")
            )
        missing = sorted(set(expected) - set(self.tensors) - set(optional))
        if missing:
            patterns = sorted({_key_pattern(name) for name in missing})
            more = f" (and {len(patterns) - 3} more)" if len(patterns) > 3 else ""
            raise ChartWizValueError(
                f"missing weights: {', '.join(patterns[:3])}{more}; none of the given files has them, and ChartWiz "
                "never initializes a converted weight at random"
            )
        for name, shape in expected.items():
            if name in self.tensors and self.tensors[name].shape != shape:
                source, key = self.origins[name]
                raise ChartWizValueError(
                    f"{source}: {key} has shape {tuple(self.tensors[name].shape)}, but the config calls for "
                    f"{tuple(shape)} ({name})"
                )

    def log_summary(self) -> None:
        for source, count in self.used.items():
            if count:
                logger.info("Used %d weights from %s", count, source)
        grouped = defaultdict(set)
        for source, key, reason in self.ignored:
            grouped[(source, reason)].add(_key_pattern(key))
        for (source, reason), patterns in grouped.items():
            logger.info("Left out of %s (%s): %s", source, reason, ", ".join(sorted(patterns)))


def _load_vision_source(vision: str) -> tuple[Pix2StructVisionConfig, bool]:
    """The vision config of a Pix2Struct checkpoint, and whether it is a full model (the encoder under `encoder.`)."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(vision)
        vision_config = Pix2StructVisionConfig.from_pretrained(vision)
    except (OSError, ValueError) as error:
        raise ChartWizOSError(
            f"cannot read the Pix2Struct vision tower {vision!r} ({_one_line(error)}); pass --vision with a local "
            "Pix2Struct / DePlot checkpoint"
        ) from error
    model_type = config_dict.get("model_type")
    if model_type not in ("pix2struct", "pix2struct_vision_model"):
        raise ChartWizValueError(f"{vision}: model_type {model_type!r} is not a Pix2Struct / DePlot checkpoint")
    return vision_config, model_type == "pix2struct"


def _load_tokenizer(llava: str, text: Optional[str]):
    """The tokenizer the original trained with: saved beside its weights, or else the base language model's."""
    source = llava if any(_resolve(llava, name) for name in TOKENIZER_FILES) else text
    if source is None:
        raise ChartWizValueError(
            f"{llava} has no tokenizer; pass --text with the language model the original started from (its tokenizer)"
        )
    logger.info("Tokenizer from %s", source)
    with reading_checkpoint(source):
        return AutoTokenizer.from_pretrained(source)


def _lora_config_for_chartwiz(adapter: str):
    """The adapter's LoRA config, with its target modules narrowed to ChartWiz's language model."""
    from peft import LoraConfig, PeftConfig

    try:
        config = PeftConfig.from_pretrained(adapter)
    except (OSError, ValueError, TypeError) as error:
        raise ChartWizValueError(f"{adapter}: not a PEFT adapter ({_one_line(error)})") from error
    if not isinstance(config, LoraConfig):
        raise ChartWizValueError(
            f"{adapter}: a {type(config).__name__} adapter; the original trained LoRA adapters only"
        )
    if config.modules_to_save:
        raise ChartWizValueError(
            f"{adapter}: modules_to_save is not supported (the original kept those in non_lora_trainables)"
        )
    targets = config.target_modules
    if isinstance(targets, str) or not targets:
        raise ChartWizValueError(
            f"{adapter}: target_modules {targets!r} is not a list of module names, as the original's LoRA runs wrote"
        )
    # The original named its LoRA targets by suffix (q_proj, ...); in ChartWiz the same layers sit under
    # model.language_model, and a full-match pattern keeps the vision tower and projector out whatever their names.
    names = "|".join(re.escape(name) for name in sorted(targets))
    config.target_modules = rf"model\.language_model\.(?:.*\.)?(?:{names})"
    config.inference_mode = True
    return config


def _load_lora_weights(adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors, renamed from the original model's module paths to ChartWiz's."""
    for filename in ADAPTER_WEIGHTS_NAMES:
        path = _resolve(adapter, filename)
        if path is not None:
            break
    else:
        raise ChartWizValueError(f"{adapter}: no {' or '.join(ADAPTER_WEIGHTS_NAMES)}")
    renamed = {}
    for key, tensor in load_weights_file(path).items():
        target = None
        if key.startswith(_PEFT_PREFIX):
            target, _ = llava_key_to_chartwiz(key[len(_PEFT_PREFIX) :])
        if target is None:
            raise ChartWizValueError(
                f"{path}: unexpected key {key}: not a LoRA weight of the original's language model"
            )
        renamed[_PEFT_PREFIX + target] = tensor
    return renamed


def apply_lora(model: ChartWizForConditionalGeneration, adapter: str, base_model_name_or_path: Optional[str] = None):
    """
    Wraps `model` in a PEFT model carrying the original's LoRA adapter from `adapter`, every LoRA weight loaded;
    `base_model_name_or_path` is where the adapter's config will say its base model is.
    """
    from peft import get_peft_model, set_peft_model_state_dict

    config = _lora_config_for_chartwiz(adapter)
    state_dict = _load_lora_weights(adapter)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as error:
        raise ChartWizValueError(f"{adapter}: {_one_line(error)}") from error
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    result = set_peft_model_state_dict(peft_model, state_dict)
    if result.unexpected_keys:
        raise ChartWizValueError(f"{adapter}: unexpected key {result.unexpected_keys[0]} for the targeted modules")
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing:
        raise ChartWizValueError(f"{adapter}: the adapter has no weight for {missing[0]}")
    return peft_model


def collect_weights(
    llava: str,
    vision: str,
    vision_is_full_model: bool,
    text: Optional[str],
    mm_projector: Optional[str],
    non_lora: Optional[str],
    config: ChartWizConfig,
) -> WeightCollector:
    """
    ChartWiz's weights from the original's files, checked against `config`: the language model (and whatever else
    they hold) from `text` or else `llava`, then the side files' weights over them, then the vision tower from the
    Pix2Struct checkpoint `vision` if none of those held it.
    """
    collector = WeightCollector()
    base = text if text is not None else llava
    base_weights = load_checkpoint_weights(base)
    if base_weights is None:
        raise ChartWizValueError(
            f"{base}: no weights (looked for {', '.join(WEIGHTS_NAMES)})"
            + ("" if text else "; for a stage-1 or LoRA run pass --text with the base language model")
        )
    collector.add(base, base_weights)
    if mm_projector is not None:
        collector.add(mm_projector, load_weights_file(mm_projector))
    if non_lora is not None:
        collector.add(non_lora, load_weights_file(non_lora), strip_prefix=_PEFT_PREFIX)
    if not collector.has_prefix("model.vision_tower."):
        vision_weights = load_checkpoint_weights(vision)
        if vision_weights is None:
            raise ChartWizValueError(
                f"{vision}: no weights for the vision tower (looked for {', '.join(WEIGHTS_NAMES)})"
            )
        collector.add(vision, vision_weights, mapper=_pix2struct_key_mapper(vision_is_full_model))

    tied = bool(config.text_config.tie_word_embeddings)
    if tied and "lm_head.weight" in collector.tensors:
        collector.ignore("lm_head.weight", "tied to the input embeddings (tie_word_embeddings)")
    with init_empty_weights():
        expected = {
            name: tensor.shape for name, tensor in ChartWizForConditionalGeneration(config).state_dict().items()
        }
    collector.check_against(expected, optional=("lm_head.weight",) if tied else ())
    collector.log_summary()
    return collector


def _model_from_weights(
    config: ChartWizConfig, collector: WeightCollector, dtype: Union[str, torch.dtype]
) -> ChartWizForConditionalGeneration:
    """The model holding the collected tensors (in `dtype`, `"auto"`: the language model's) without copying them."""
    if dtype == "auto":
        dtype = collector.tensors["model.language_model.embed_tokens.weight"].dtype
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    state_dict = {name: tensor.to(dtype) for name, tensor in collector.tensors.items()}
    collector.tensors.clear()
    # Built without memory (meta parameters, real buffers); the loaded tensors become its parameters as they are.
    with init_empty_weights():
        model = ChartWizForConditionalGeneration(config)
    model.load_state_dict(state_dict, strict=False, assign=True)
    if config.text_config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(dtype)
    on_meta = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if on_meta:
        raise RuntimeError(f"weights left unloaded: {', '.join(on_meta[:3])}")
    return model.eval()


def _add_tokenizer_settings(model: ChartWizForConditionalGeneration, tokenizer, settings: LlavaSettings) -> None:
    """`<image>` in the tokenizer and the model, the training length, and the original's generation tokens."""
    original_vocab = len(tokenizer)
    model.config.image_token_id = add_image_token(tokenizer, model)
    text_config = model.config.text_config
    if settings.model_max_length:
        tokenizer.model_max_length = settings.model_max_length
    elif getattr(text_config, "max_position_embeddings", None):
        tokenizer.model_max_length = text_config.max_position_embeddings
    logger.info("Tokenizer: %d tokens, <image> added as id %d", original_vocab, model.config.image_token_id)
    text_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = chartwiz_generation_config(text_config, tokenizer, model.config.image_token_id)
    if tokenizer.eos_token_id is not None:
        # The original's generate() was given the tokenizer's end-of-text token.
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def convert_llava_to_chartwiz(
    llava: str,
    output_dir: Optional[str] = None,
    vision: Optional[str] = None,
    mm_projector: Optional[str] = None,
    text: Optional[str] = None,
    lora: Optional[str] = None,
    non_lora: Optional[str] = None,
    keep_adapter: bool = False,
    chat_template: str = "synatra_mini",
    max_patches: int = 512,
    header_text: str = DEPLOT_HEADER_TEXT,
    dtype: Union[str, torch.dtype] = "auto",
    push_to_hub: Optional[str] = None,
    private: bool = False,
):
    """
    Converts an original ChartWiz checkpoint (LLaVA fork format) into a ChartWiz model and processor, and saves them
    (safetensors, processor with the header font, chat template) to `output_dir` if given.

    Args:
        llava (`str`):
            The original checkpoint folder (or Hub repo): its `config.json` always, its weights unless `text` gives
            the language model.
        output_dir (`str`, *optional*):
            Where to save the converted checkpoint; required with `push_to_hub`.
        vision (`str`, *optional*):
            The Pix2Struct / DePlot checkpoint the original encoded with, full or vision-only; defaults to the
            config's `mm_vision_tower`. Gives the vision config, the patch settings, and the vision weights when
            the original checkpoint does not hold them.
        mm_projector (`str`, *optional*):
            A stage-1 `mm_projector.bin`: the projector weights, replacing any in `llava`.
        text (`str`, *optional*):
            The base language model (weights, and tokenizer when `llava` has none) of a stage-1 or LoRA run.
        lora (`str`, *optional*):
            A LoRA run's PEFT adapter folder (`adapter_config.json`, `adapter_model.bin` or `.safetensors`).
        non_lora (`str`, *optional*):
            A LoRA run's `non_lora_trainables.bin`; defaults to the one in `lora` when it has one.
        keep_adapter (`bool`, *optional*, defaults to `False`):
            Keep the LoRA adapter unmerged, saved under `output_dir/adapter`, instead of merging it.
        chat_template (`str`, *optional*, defaults to `"synatra_mini"`):
            `synatra_mini` (the 1.3B model), `vicuna_v1` (the 7B model) or Jinja source.
        max_patches (`int`, *optional*, defaults to 512):
            Patches (and image tokens) per image; the original always used 512.
        header_text (`str`, *optional*, defaults to DePlot's header):
            The header rendered above each chart when the vision checkpoint is a VQA (DePlot) model.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            The converted weights' dtype; `"auto"` keeps the language model's.
        push_to_hub (`str`, *optional*):
            A Hub repo to upload the saved folder to, in one commit.
        private (`bool`, *optional*, defaults to `False`):
            Create the Hub repo as private.

    Returns:
        `(model, processor)`: the model is a `PeftModel` when `keep_adapter`, else a
        [`ChartWizForConditionalGeneration`].
    """
    if keep_adapter and lora is None:
        raise ChartWizValueError("--keep-adapter needs --lora")
    if non_lora is not None and lora is None:
        raise ChartWizValueError("--non-lora goes with --lora")
    if push_to_hub and output_dir is None:
        raise ChartWizValueError("push_to_hub needs output_dir: the saved folder is what gets uploaded")
    if lora is not None and non_lora is None:
        non_lora = _resolve(lora, "non_lora_trainables.bin")

    text_config_dict, settings = read_llava_config(llava)
    vision = vision or settings.vision_tower
    if vision is None:
        raise ChartWizValueError(f"{llava}: config.json names no mm_vision_tower; pass --vision")
    vision_config, vision_is_full_model = _load_vision_source(vision)
    if settings.mm_hidden_size is not None and settings.mm_hidden_size != vision_config.hidden_size:
        raise ChartWizValueError(
            f"{llava}: config.json has mm_hidden_size {settings.mm_hidden_size}, but the vision tower {vision} has "
            f"hidden_size {vision_config.hidden_size}: it is not the tower this projector was trained on"
        )
    logger.info(
        "Converting a %s checkpoint; LLaVA settings taken out of the language model's config: %s",
        settings.model_type,
        ", ".join(f"{key}={value!r}" for key, value in settings.dropped.items()),
    )
    config = ChartWizConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config_dict,
        projector_type=settings.projector_type,
        max_patches=max_patches,
    )
    # The language model's setting at the top too, where PEFT's merge looks for it.
    config.tie_word_embeddings = bool(config.text_config.tie_word_embeddings)

    collector = collect_weights(llava, vision, vision_is_full_model, text, mm_projector, non_lora, config)
    model = _model_from_weights(config, collector, dtype)
    if lora is not None and not keep_adapter:
        # PEFT's own merge, into the same layers the original merged into.
        model = apply_lora(model, lora).merge_and_unload()
        logger.info("Merged the LoRA adapter of %s", lora)

    tokenizer = _load_tokenizer(llava, text)
    _add_tokenizer_settings(model, tokenizer, settings)
    processor = build_processor(tokenizer, vision, max_patches, header_text, chat_template)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        logger.info("Saved ChartWiz (model + processor) to %s", output_dir)
    if keep_adapter:
        base = push_to_hub or (os.path.abspath(output_dir) if output_dir is not None else None)
        model = apply_lora(model, lora, base_model_name_or_path=base)
        if output_dir is not None:
            model.save_pretrained(os.path.join(output_dir, "adapter"))
            logger.info("Saved the LoRA adapter, unmerged, to %s", os.path.join(output_dir, "adapter"))
    if push_to_hub:
        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=push_to_hub,
            folder_path=output_dir,
            commit_message=f"ChartWiz converted from an original {settings.model_type} checkpoint",
        )
        logger.info("Uploaded %s to %s", output_dir, push_to_hub)
    return model.eval(), processor


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's options, for `chartwiz convert` and `python -m chartwiz_hf.convert_chartwiz_llava_to_hf`."""
    parser.add_argument(
        "--llava", required=True, help="the original checkpoint folder or Hub repo (config.json, and its weights)"
    )
    parser.add_argument(
        "--vision",
        default=None,
        help="Pix2Struct/DePlot checkpoint the original encoded with (default: mm_vision_tower)",
    )
    parser.add_argument("--mm-projector", default=None, help="a stage-1 mm_projector.bin (use with --text)")
    parser.add_argument("--text", default=None, help="the base language model of a stage-1 or LoRA run")
    parser.add_argument("--lora", default=None, help="a LoRA run's PEFT adapter folder")
    parser.add_argument(
        "--non-lora", default=None, help="a LoRA run's non_lora_trainables.bin (default: the one in --lora)"
    )
    parser.add_argument(
        "--keep-adapter", action="store_true", help="keep the LoRA adapter unmerged, saved in OUT/adapter"
    )
    parser.add_argument("--template", default="synatra_mini", choices=CHAT_TEMPLATES, help="chat template")
    parser.add_argument("--max-patches", type=int, default=512, help="patches (= image tokens) per image")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="dtype of the weights"
    )
    parser.add_argument("--out", required=True, help="output directory (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the converted folder to REPO")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")


def convert_from_args(args) -> None:
    inputs = (args.llava, args.vision, args.mm_projector, args.text, args.lora, args.non_lora)
    with replacing_folder(args.out, args.overwrite, inputs=[source for source in inputs if source]):
        convert_llava_to_chartwiz(
            args.llava,
            output_dir=args.out,
            vision=args.vision,
            mm_projector=args.mm_projector,
            text=args.text,
            lora=args.lora,
            non_lora=args.non_lora,
            keep_adapter=args.keep_adapter,
            chat_template=args.template,
            max_patches=args.max_patches,
            dtype=args.dtype,
            push_to_hub=args.push_to_hub,
            private=args.private,
        )
    print(f"Saved ChartWiz (model + processor) converted from {args.llava} to {args.out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chartwiz_hf.convert_chartwiz_llava_to_hf",
        description=__doc__.splitlines()[0],
        epilog=EPILOG_TXT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_convert_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert_from_args(args)
    except ChartWizError as error:
        # The user's mistake in one line, as `chartwiz convert` prints it; anything else keeps its traceback.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "LLAVA_MODEL_TYPES",
    "LlavaSettings",
    "WeightCollector",
    "add_convert_arguments",
    "apply_lora",
    "collect_weights",
    "convert_from_args",
    "convert_llava_to_chartwiz",
    "llava_key_to_chartwiz",
    "load_checkpoint_weights",
    "load_weights_file",
    "read_llava_config",
]


if __name__ == "__main__":
    sys.exit(main())
