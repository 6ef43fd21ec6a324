"""
`evaluate_model`: a split of a built dataset answered by a model (`prediction`), and the answers scored (`scoring`).
"""

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Optional

from chartwiz.batch.run import load_chat_engine, load_inference_engine
from chartwiz.batch.run_store import changed_settings, output_paths, read_json
from chartwiz.errors import ChartWizValueError
from chartwiz.fingerprints import model_fingerprints
from chartwiz.inference.chat_engines import is_chartwiz_checkpoint
from chartwiz.inference.engines import InferenceEngine
from chartwiz.names import DATASET_CONFIGS, DEFAULT_BATCH_SIZE

from .instructions import SYSTEM, load_instructions
from .metrics import DEFAULT_BLEU_TOKENIZE, bleu_signature
from .prediction import ANSWERS_FILE, check_one_ablation, load_split_rows, predict_dataset
from .report import PREDICTIONS_FILE
from .scoring import score_run


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EngineOptions:
    """How the model runs: the arguments `load_inference_engine` and `load_chat_engine` share."""

    engine: str
    device: Optional[str]
    dtype: Optional[str]
    batch_size: Optional[int]
    tensor_parallel_size: int
    data_parallel_size: int


def evaluate_model(
    model_name_or_path: str,
    dataset_path: str,
    out_dir: str,
    config: str = "finetune",
    split: str = "test",
    max_samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    max_new_tokens: int = 512,
    adapter: Optional[str] = None,
    device: Optional[str] = None,
    bleu_tokenize: str = DEFAULT_BLEU_TOKENIZE,
    blank_images: bool = False,
    progress: bool = True,
    shuffled_images: bool = False,
    restart: bool = False,
    engine: str = "transformers",
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    dtype: Optional[str] = None,
    instructions: Optional[str] = None,
    trust_remote_code: bool = False,
    vllm_model_impl: Optional[str] = None,
) -> dict:
    """
    Answers a split of a built dataset with greedy, batched generation (`predict_dataset`), scores the answers and
    writes `out_dir`: `predictions.jsonl` (re-scorable), `metrics.json`, `report.md` and `report.png`. Running again
    into the same `out_dir` resumes: rows already answered are not asked again, unless the model's files or the row
    changed since (then they are). Returns the metrics.

    Args:
        model_name_or_path (`str`): ChartWiz checkpoint directory or Hub repo.
        dataset_path (`str`): a dataset built by `chartwiz data build` (a local folder or a Hub repo).
        out_dir (`str`): the report folder.
        config (`str`, *optional*, defaults to `"finetune"`): `pretrain`, `finetune`, `gpt` or `all`.
        split (`str`, *optional*, defaults to `"test"`): the split to answer.
        max_samples (`int`, *optional*): only the first `max_samples` rows of the split.
        batch_size (`int`, *optional*): questions generated together (8), or with vLLM requests in flight (256).
        max_new_tokens (`int`, *optional*, defaults to 512): the longest answer.
        adapter (`str`, *optional*): a PEFT (LoRA) adapter folder applied on top of the model.
        device (`str`, *optional*): where to run the model (default: every GPU in bf16, else the CPU).
        bleu_tokenize (`str`, *optional*, defaults to `"intl"`): sacrebleu's tokenizer for `bleu`.
        blank_images (`bool`, *optional*, defaults to `False`): an image ablation: every chart is replaced by a white
            image of its size, which shows how much of a score comes from reading the chart rather than from the
            question and the language prior. Recorded in the run's settings, `metrics.json` and the report.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.
        shuffled_images (`bool`, *optional*, defaults to `False`): the second image ablation: every row is shown the
            chart of another row of the split (`shuffled_charts`), which tells reading this chart from the help of
            any chart at all (a chart-like input, its type, the vocabulary of its labels).
        restart (`bool`, *optional*, defaults to `False`): start over in `out_dir`, whatever run it holds.
        engine (`str`, *optional*, defaults to `"transformers"`): `"vllm"` generates with vLLM
            (`load_inference_engine`), with `tensor_parallel_size` and `data_parallel_size`.
        dtype (`str`, *optional*): the dtype to answer in (default: bf16 on a GPU, the checkpoint's on the CPU).
        instructions (`str`, *optional*): a preset (`none`, the default, or `formats`) or a JSON file of words added
            to each question (`load_instructions`); what is sent is recorded in the run's settings.
        trust_remote_code (`bool`, *optional*, defaults to `False`): run the code a checkpoint other than ChartWiz
            ships (its processor or model).
        vllm_model_impl (`str`, *optional*): vLLM's `model_impl` for a model other than ChartWiz (`auto`, `vllm` or
            `transformers`); ChartWiz always runs on vLLM's Transformers backend.

    Any checkpoint that loads with `AutoModelForImageTextToText` and `AutoProcessor` can be evaluated: a model other
    than ChartWiz is asked through its own chat template and processor (`chat_engines`, `chat_inputs`).
    """
    _check_arguments(config, batch_size, max_samples, max_new_tokens, blank_images, shuffled_images, bleu_tokenize)
    task_instructions = load_instructions(instructions)
    run = _run_settings(model_name_or_path, adapter, dataset_path, config, split, max_samples, task_instructions)
    ablation = {"blank_images": blank_images, "shuffled_images": shuffled_images}
    if not restart:
        _check_run(out_dir, {**run, "max_new_tokens": max_new_tokens, **ablation})
    dataset = load_split_rows(dataset_path, config, split, max_samples)
    options = _EngineOptions(engine, device, dtype, batch_size, tensor_parallel_size, data_parallel_size)
    model, processor = _load_model(
        model_name_or_path, adapter, options, task_instructions, trust_remote_code, vllm_model_impl
    )
    _answer(model, processor, dataset, out_dir, run, options, max_new_tokens, ablation, progress, restart)
    return score_run(out_dir, bleu_tokenize=bleu_tokenize, rows=len(dataset))


def _check_arguments(
    config: str,
    batch_size: Optional[int],
    max_samples: Optional[int],
    max_new_tokens: int,
    blank_images: bool,
    shuffled_images: bool,
    bleu_tokenize: str,
) -> None:
    """Refuses bad arguments before anything loads, a bad BLEU tokenizer included (not after the generation)."""
    if config not in DATASET_CONFIGS:
        raise ChartWizValueError(f"Unknown config {config!r}; choose from {', '.join(DATASET_CONFIGS)}.")
    if batch_size is not None and batch_size < 1:
        raise ChartWizValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if max_samples is not None and max_samples < 1:
        raise ChartWizValueError(f"--max-samples must be at least 1, got {max_samples}.")
    if max_new_tokens < 1:
        raise ChartWizValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    check_one_ablation(blank_images, shuffled_images)
    bleu_signature(bleu_tokenize)  # a bad tokenizer fails now, not after the generation


def _run_settings(
    model_name_or_path: str,
    adapter: Optional[str],
    dataset_path: str,
    config: str,
    split: str,
    max_samples: Optional[int],
    task_instructions: dict,
) -> dict:
    """What the answers depend on and the run's settings file records (its model, its rows, its instructions)."""
    settings = {
        "model": model_name_or_path,
        "adapter": adapter,
        "dataset": dataset_path,
        "config": config,
        "split": split,
        "max_samples": max_samples,
    }
    if task_instructions:  # absent without instructions, as in the runs made before there were any
        settings["instructions"] = task_instructions
    return settings


def _check_run(out_dir: str, run: dict) -> None:
    """
    Checks, before anything loads, that `out_dir` is new or holds an earlier, interrupted try of the same run;
    `run_inference` compares the settings known once the model has loaded (dtype, chat template...).
    """
    _, meta_path = output_paths(os.path.join(out_dir, ANSWERS_FILE))
    earlier = read_json(meta_path)
    if earlier is not None:
        stored = earlier.get("settings", {})
        # Only what is known before the model loads; `check_settings` compares the rest.
        changed = ", ".join(
            f"{key} {stored.get(key)!r} -> {run[key]!r}" for key in changed_settings(stored, run, names=run)
        )
        if changed:
            raise ChartWizValueError(
                f"{out_dir} holds the predictions of another run ({changed}): choose another --out, or --restart to "
                "start over in it."
            )
    elif os.path.exists(os.path.join(out_dir, PREDICTIONS_FILE)):
        raise ChartWizValueError(
            f"{out_dir} holds a {PREDICTIONS_FILE} of unknown origin: choose another --out, or --restart to "
            "replace it."
        )


def _load_model(
    model_name_or_path: str,
    adapter: Optional[str],
    options: _EngineOptions,
    task_instructions: dict,
    trust_remote_code: bool,
    vllm_model_impl: Optional[str],
):
    """ChartWiz on `load_inference_engine`, any other model on `load_chat_engine` with its own chat template."""
    if is_chartwiz_checkpoint(model_name_or_path):
        if SYSTEM in task_instructions:
            raise ChartWizValueError(
                "ChartWiz's prompts have no system turn: leave 'system' out of --instructions for it."
            )
        if vllm_model_impl not in (None, "transformers"):
            raise ChartWizValueError(
                "ChartWiz runs on vLLM's Transformers backend only: leave --vllm-model-impl out for it."
            )
        return load_inference_engine(
            model_name_or_path,
            options.engine,
            adapter,
            options.device,
            options.dtype,
            batch_size=options.batch_size,
            tensor_parallel_size=options.tensor_parallel_size,
            data_parallel_size=options.data_parallel_size,
        )
    if adapter is not None:
        raise ChartWizValueError("--adapter applies to ChartWiz checkpoints; merge another model's adapter first.")
    return load_chat_engine(
        model_name_or_path,
        options.engine,
        options.device,
        options.dtype,
        options.batch_size,
        options.tensor_parallel_size,
        options.data_parallel_size,
        trust_remote_code=trust_remote_code,
        system=task_instructions.get(SYSTEM),
        vllm_model_impl=vllm_model_impl,
    )


def _answer(
    model,
    processor,
    dataset,
    out_dir: str,
    run: dict,
    options: _EngineOptions,
    max_new_tokens: int,
    ablation: dict,
    progress: bool,
    restart: bool,
) -> None:
    """
    `predict_dataset` with the loaded model, asked as the run's settings say (`_run_settings`: the model's files for
    the fingerprints, the instructions), which are completed by what is known once the model has loaded.
    """
    # The settings file is written once the dataset and the model have loaded: a mistyped path claims no folder.
    settings = {**run, "dtype": str(model.dtype).replace("torch.", "")}
    if options.engine != "transformers":  # absent for the transformers engine, as in the runs made before the choice
        settings["engine"] = options.engine
    info = {"batch_size": options.batch_size, "device": str(getattr(model, "device", options.engine))}
    if restart:
        predictions = os.path.join(out_dir, PREDICTIONS_FILE)
        if os.path.exists(predictions):
            os.remove(predictions)
    with model if isinstance(model, InferenceEngine) else contextlib.nullcontext():
        summary = predict_dataset(
            model,
            processor,
            dataset,
            out_dir,
            DEFAULT_BATCH_SIZE if options.batch_size is None else options.batch_size,
            max_new_tokens,
            ablation["blank_images"],
            settings,
            progress,
            info,
            shuffled_images=ablation["shuffled_images"],
            fingerprints=model_fingerprints(run["model"], run["adapter"]),
            restart=restart,
            instructions=run.get("instructions"),
        )
    if summary.answered or summary.already_done:
        logger.info(
            "Answered %d questions in %.1f s (%.2f questions/s); %d were answered before%s",
            summary.answered,
            summary.seconds,
            summary.questions_per_second,
            summary.already_done,
            summary.resume_note(),
        )


__all__ = ["evaluate_model"]
