"""Scoring ChartWiz on a built dataset: answers from `chartwiz infer`'s engine, the task metrics by task and chart
type; the report they make is `evaluation_report.py`'s."""

import contextlib
import json
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Optional

from PIL import Image

from chartwiz.batch.questions import (
    DatasetImages,
    Question,
    Unreadable,
    iter_json_records,
    load_split,
    read_dataset_questions,
)
from chartwiz.batch.run import InferenceSummary, load_chat_engine, load_inference_engine, run_inference
from chartwiz.batch.run_store import changed_settings, output_paths, read_json, read_jsonl
from chartwiz.errors import ChartWizError, ChartWizFileNotFoundError, ChartWizValueError
from chartwiz.files import write_json_atomic, write_text_atomic
from chartwiz.fingerprints import ContentDigests, model_fingerprints
from chartwiz.inference.chat_engines import is_chartwiz_checkpoint
from chartwiz.inference.engines import InferenceEngine
from chartwiz.names import DATASET_CONFIGS, DEFAULT_BATCH_SIZE, DEFAULT_DATASET_CONFIG, INSTRUCTIONS

from .instructions import SYSTEM, apply_instructions, load_instructions
from .metrics import DEFAULT_BLEU_TOKENIZE, TASK_METRICS, TASKS, bleu_signature, score_task
from .report import CHART_FILE, PREDICTIONS_FILE, REPORT_FILE, draw_chart, render_report


logger = logging.getLogger(__name__)

# `chartwiz infer`'s answers; beside it its errors file (the rows that could not be asked) and its settings file.
ANSWERS_FILE = "answers.jsonl"
METRICS_FILE = "metrics.json"
PREDICTION_FIELDS = ("id", "task", "chart_type", "prediction", "reference")
NO_CHART_TYPE = "unknown"


@dataclass
class Prediction:
    """One scored line: the fields of a predictions file."""

    id: str
    task: str
    chart_type: str
    prediction: str
    reference: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------------------
# Predictions files


def read_predictions(path: str) -> tuple[list[Prediction], list[dict]]:
    """
    The predictions of a JSON Lines file or a JSON array, read as `chartwiz infer` reads its inputs (`id`, `task`,
    `chart_type` (may be empty or absent), `prediction`, `reference`), and `{"source": "file:line", "reason": ...}`
    for each record that cannot be scored (it does not parse, lacks a field, names an unknown task or repeats an
    id); blank lines are ignored.
    """
    if not os.path.isfile(path):
        raise ChartWizFileNotFoundError(f"{path}: no such predictions file")
    predictions, skipped, seen = [], [], set()
    for source, record in iter_json_records(path):
        try:
            prediction = _prediction_from_record(record)
        except ValueError as error:
            skipped.append({"source": source, "reason": str(error)})
            continue
        if prediction.id in seen:
            skipped.append({"source": source, "id": prediction.id, "reason": f"id {prediction.id!r} repeats"})
            continue
        seen.add(prediction.id)
        predictions.append(prediction)
    return predictions, skipped


def _prediction_from_record(record) -> Prediction:
    if isinstance(record, Unreadable):
        raise ChartWizValueError(record.reason)
    if not isinstance(record, dict):
        raise ChartWizValueError("a record should be a JSON object")
    record = dict(record)
    record.setdefault("chart_type", "")
    if record["chart_type"] is None:
        record["chart_type"] = ""
    for name in PREDICTION_FIELDS:
        if name not in record:
            raise ChartWizValueError(f"missing field {name!r}")
        if not isinstance(record[name], str):
            raise ChartWizValueError(f"field {name!r} should be a string, got {type(record[name]).__name__}")
    if record["task"] not in TASK_METRICS:
        raise ChartWizValueError(f"unknown task {record['task']!r} (expected one of {', '.join(TASKS)})")
    return Prediction(**{name: record[name] for name in PREDICTION_FIELDS})


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def score_predictions(
    predictions: Sequence[Prediction], bleu_tokenize: str = DEFAULT_BLEU_TOKENIZE
) -> dict[str, dict]:
    """
    `{"by_task": {task: {metric: value, "n": n}}, "by_chart_type": {chart_type: {task: {...}}}}`, metrics in percent;
    predictions without a chart type are grouped under `unknown`.
    """
    groups: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        groups[prediction.task, prediction.chart_type or NO_CHART_TYPE].append(prediction)
    by_task, by_chart_type = {}, defaultdict(dict)
    for task in TASKS:
        rows = [prediction for (name, _), group in groups.items() if name == task for prediction in group]
        if rows:
            by_task[task] = _score(task, rows, bleu_tokenize)
    for task, chart_type in sorted(groups, key=lambda key: (key[1], TASKS.index(key[0]))):
        by_chart_type[chart_type][task] = _score(task, groups[task, chart_type], bleu_tokenize)
    return {"by_task": by_task, "by_chart_type": dict(by_chart_type)}


def _score(task: str, rows: Sequence[Prediction], bleu_tokenize: str) -> dict[str, float]:
    references, predictions = [row.reference for row in rows], [row.prediction for row in rows]
    return score_task(task, references, predictions, bleu_tokenize=bleu_tokenize)


# ----------------------------------------------------------------------------------------------------------------
# Generation


def split_questions(dataset) -> tuple[list[Question], list]:
    """
    The questions of a built split as `chartwiz infer` reads them (`read_dataset_questions`), and each row's task.
    What scoring needs is checked too: a row of an unknown task or without a reference answer is a bad record. A
    pretraining row (task `table`, an empty prompt: the image alone) is asked the original table instruction, as a
    stage-2 model was taught, which makes `pretrain` and `finetune` table scores comparable.
    """

    if "task" not in dataset.column_names:
        raise ChartWizValueError("The dataset has no column ['task']; expected a `chartwiz data build` split.")
    tasks = list(dataset["task"])
    questions = []
    for question in read_dataset_questions(dataset):
        task = tasks[question.image]  # a dataset question's image is its row
        if task == "table" and question.turn == 1 and not question.question and question.id is not None:
            question = replace(question, question=INSTRUCTIONS["table"][0], error=None)
        if question.error is None and task not in TASK_METRICS:
            question = replace(question, error=f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        elif question.error is None and not (question.reference or "").strip():
            question = replace(question, error="the reference answer is empty")
        questions.append(question)
    return questions, tasks


def blank_charts(load_image: Callable) -> Callable:
    """`load_image` with every chart replaced by a plain white image of its size: the `--blank-images` ablation."""

    def load_blank(question: Question):
        image, chart_type = load_image(question)
        return Image.new("RGB", image.size, "white"), chart_type

    # The answer still depends on the chart: its size.
    load_blank.image_digest = getattr(load_image, "image_digest", None)
    return load_blank


def chart_identities(dataset) -> list[str]:
    """Which chart each row of a built split shows: its image file, or a digest of the image bytes it embeds."""
    from datasets import Image as ImageFeature

    identities = []
    for stored in dataset.select_columns(["image"]).cast_column("image", ImageFeature(decode=False))["image"]:
        stored = stored or {}
        if stored.get("bytes"):
            identities.append(ContentDigests.of_bytes(stored["bytes"]))
        else:
            identities.append(os.path.abspath(stored["path"]) if stored.get("path") else "")
    return identities


def shuffled_charts(load_image: Callable, dataset, seed: int = 0) -> Callable:
    """
    `load_image` with every row shown the chart of another row of `dataset`: the `--shuffle-images` ablation. The
    split's charts are put in a seeded random cycle and each chart's rows get the next chart's image, so no row sees
    its own chart and the rows of one chart (its questions, its turns) all see the same other one. Rows without an
    image keep theirs (they are reported as bad records). Raises `ValueError` for a split of fewer than two charts.
    """
    identities = chart_identities(dataset)
    charts = list(dict.fromkeys(identity for identity in identities if identity))
    if len(charts) < 2:
        raise ChartWizValueError(f"--shuffle-images needs at least two charts in the split, got {len(charts)}.")
    random.Random(seed).shuffle(charts)
    first_row = {}
    for row, identity in enumerate(identities):
        first_row.setdefault(identity, row)
    following = {chart: first_row[charts[(place + 1) % len(charts)]] for place, chart in enumerate(charts)}

    def shown(question: Question) -> Question:
        identity = identities[question.image]
        return replace(question, image=following[identity]) if identity else question

    def load_shuffled(question: Question):
        image, _ = load_image(shown(question))
        # No chart type from the other chart: answers are grouped by the row's own, what was asked about.
        return image, None

    # The answer depends on the chart shown, the other row's.
    base_digest = getattr(load_image, "image_digest", None)
    load_shuffled.image_digest = None if base_digest is None else lambda question: base_digest(shown(question))
    return load_shuffled


def check_one_ablation(blank_images: bool, shuffled_images: bool) -> None:
    """Refuses both image ablations at once (`chartwiz evaluate` makes the two flags exclusive too)."""
    if blank_images and shuffled_images:
        raise ChartWizValueError("--blank-images and --shuffle-images are two ablations: choose one.")


def predict_dataset(
    model,
    processor,
    dataset,
    out_dir: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = 512,
    blank_images: bool = False,
    settings: Optional[dict] = None,
    progress: bool = True,
    info: Optional[dict] = None,
    shuffled_images: bool = False,
    fingerprints: Optional[dict] = None,
    restart: bool = False,
    instructions: Optional[dict] = None,
) -> InferenceSummary:
    """
    Answers every row of `dataset` with `chartwiz infer`'s engine (`run_inference`: greedy, length-sorted batches,
    charts prepared ahead of the model, each prompt checked against the context) into `out_dir/answers.jsonl`, then
    writes the answered rows as `predictions.jsonl`. Rerunning resumes: rows answered or rejected before are not
    asked again while their fingerprints hold (the model's files, the row and its image), those that no longer hold
    are asked again, and other settings than the first run's are refused. Rows that cannot be asked are listed with
    the reason in `answers.errors.jsonl`. Returns what this call did.

    Args:
        model, processor: a loaded ChartWiz (`load_model_for_inference`).
        dataset (`datasets.Dataset`): a split built by `chartwiz data build`.
        out_dir (`str`): the report folder.
        batch_size (`int`, *optional*, defaults to 8): questions generated together.
        max_new_tokens (`int`, *optional*, defaults to 512): the longest answer.
        blank_images (`bool`, *optional*, defaults to `False`): show the model a white image of each chart's size
            instead of the chart (`blank_charts`).
        shuffled_images (`bool`, *optional*, defaults to `False`): show the model another row's chart instead of the
            row's own (`shuffled_charts`).
        settings (`dict`, *optional*): what else the answers depend on (model, dataset...), stored and compared.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.
        info (`dict`, *optional*): informative fields for the settings file (not compared).
        fingerprints (`dict`, *optional*): `model_fingerprints(model, adapter)` (see `run_inference`).
        restart (`bool`, *optional*, defaults to `False`): forget the answers of earlier runs in `out_dir`.
        instructions (`dict`, *optional*): task -> template holding `{question}` (`load_instructions`): each row's
            question is asked in its task's template (its `system` entry is the engine's).
    """
    check_one_ablation(blank_images, shuffled_images)
    questions, tasks = split_questions(dataset)
    if instructions:
        questions = apply_instructions(questions, tasks, instructions)
    load_image = DatasetImages(dataset)
    if blank_images:
        load_image = blank_charts(load_image)
    elif shuffled_images:
        load_image = shuffled_charts(load_image, dataset)
    answers_path = os.path.join(out_dir, ANSWERS_FILE)
    settings = {**(settings or {}), "blank_images": blank_images, "shuffled_images": shuffled_images}
    summary = run_inference(
        model,
        processor,
        questions,
        load_image,
        answers_path,
        settings,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        info=info,
        fingerprints=fingerprints,
        restart=restart,
    )
    answers = {(row["id"], row["turn"]): row["answer"] for row in read_jsonl(answers_path)}
    lines = [
        Prediction(str(q.id), tasks[q.image], q.chart_type or "", answers[q.key], q.reference).to_json()
        for q in questions
        if q.key in answers
    ]
    # Rewritten whole from the answers, in the split's order: the answers file is what a rerun resumes from.
    path = os.path.join(out_dir, PREDICTIONS_FILE)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return summary


# ----------------------------------------------------------------------------------------------------------------
# The two entry points


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
    task_instructions = load_instructions(instructions)
    run = {
        "model": model_name_or_path,
        "adapter": adapter,
        "dataset": dataset_path,
        "config": config,
        "split": split,
        "max_samples": max_samples,
    }
    if task_instructions:  # absent without instructions, as in the runs made before there were any
        run["instructions"] = task_instructions
    ablation = {"blank_images": blank_images, "shuffled_images": shuffled_images}
    if not restart:
        _check_run(out_dir, {**run, "max_new_tokens": max_new_tokens, **ablation})
    dataset = load_split(dataset_path, config, split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if is_chartwiz_checkpoint(model_name_or_path):
        if SYSTEM in task_instructions:
            raise ChartWizValueError(
                "ChartWiz's prompts have no system turn: leave 'system' out of --instructions for it."
            )
        if vllm_model_impl not in (None, "transformers"):
            raise ChartWizValueError(
                "ChartWiz runs on vLLM's Transformers backend only: leave --vllm-model-impl out for it."
            )
        model, processor = load_inference_engine(
            model_name_or_path,
            engine,
            adapter,
            device,
            dtype,
            batch_size=batch_size,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
        )
    else:
        if adapter is not None:
            raise ChartWizValueError("--adapter applies to ChartWiz checkpoints; merge another model's adapter first.")
        model, processor = load_chat_engine(
            model_name_or_path,
            engine,
            device,
            dtype,
            batch_size,
            tensor_parallel_size,
            data_parallel_size,
            trust_remote_code=trust_remote_code,
            system=task_instructions.get(SYSTEM),
            vllm_model_impl=vllm_model_impl,
        )
    # The settings file is written once the dataset and the model have loaded: a mistyped path claims no folder.
    settings = {**run, "dtype": str(model.dtype).replace("torch.", "")}
    if engine != "transformers":  # absent for the transformers engine, as in the runs made before the choice
        settings["engine"] = engine
    info = {"batch_size": batch_size, "device": str(getattr(model, "device", engine))}
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
            DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            max_new_tokens,
            blank_images,
            settings,
            progress,
            info,
            shuffled_images=shuffled_images,
            fingerprints=model_fingerprints(model_name_or_path, adapter),
            restart=restart,
            instructions=task_instructions,
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
    return score_run(out_dir, bleu_tokenize=bleu_tokenize, rows=len(dataset))


def split_ids(dataset_path: str, config: str, split: str, max_samples: Optional[int] = None) -> list[str]:
    """The ids of a built split's rows (its first `max_samples`), as a predictions file names them."""
    dataset = load_split(dataset_path, config, split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return [str(row_id) for row_id in dataset["id"]]


def check_ids(predictions: Sequence[Prediction], skipped: Sequence[dict], ids: Sequence[str], where: str):
    """
    The predictions whose id is a row of the split (`ids`), and skipped entries for the others (not scored) and for
    the rows of the split that neither have a prediction nor are already listed as skipped (`skipped`).
    """
    known, listed = set(ids), {str(entry["id"]) for entry in skipped if entry.get("id") is not None}
    kept, unknown = [], []
    for prediction in predictions:
        if prediction.id in known:
            kept.append(prediction)
        else:
            reason = f"id {prediction.id!r} is not a row of {where}: not scored"
            unknown.append(
                {"file": PREDICTIONS_FILE, "source": f"id {prediction.id}", "id": prediction.id, "reason": reason}
            )
    predicted = {prediction.id for prediction in predictions}
    missing = [
        {"id": row_id, "reason": f"a row of {where} with no prediction"}
        for row_id in ids
        if row_id not in predicted and row_id not in listed
    ]
    return kept, unknown, missing


def score_run(
    out_dir: str,
    predictions_path: Optional[str] = None,
    bleu_tokenize: str = DEFAULT_BLEU_TOKENIZE,
    rows: Optional[int] = None,
    dataset: Optional[str] = None,
    config: Optional[str] = None,
    split: Optional[str] = None,
) -> dict:
    """
    Scores a predictions file (default: `out_dir/predictions.jsonl`, which an outside file is copied to) and writes
    `metrics.json`, `report.md` and `report.png` into `out_dir`. Returns the metrics.

    A predictions file from outside is checked against its split: the one given (`dataset`, `config`, `split`), else
    the one its run recorded (`chartwiz evaluate` writes `answers.meta.json` beside it). Predictions of ids the split
    does not have are not scored, and rows of the split without a prediction are listed; both are in `skipped`, and
    their ids in `unknown_ids` and `missing_ids`. `checked_against` says which split, `None` where none was known.
    """
    signature = bleu_signature(bleu_tokenize)
    target = os.path.join(out_dir, PREDICTIONS_FILE)
    source = predictions_path or target
    predictions, bad_lines = read_predictions(source)
    if predictions_path is not None and not predictions:
        example = f": {bad_lines[0]['source']}: {bad_lines[0]['reason']}" if bad_lines else ""
        raise ChartWizValueError(
            f"{source} holds no prediction to score ({len(bad_lines)} records could not be read{example})."
        )
    os.makedirs(out_dir, exist_ok=True)
    if predictions_path is not None and os.path.abspath(source) != os.path.abspath(target):
        content = _read_text(source)
        if content.lstrip()[:1] == "[" and not source.endswith(".jsonl"):  # a JSON array, kept as JSON Lines
            content = "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in iter_json_records(source))
        if os.path.exists(target) and _read_text(target) != content:
            raise ChartWizValueError(f"{out_dir} already holds another {PREDICTIONS_FILE}: choose another --out.")
        write_text_atomic(target, content)
    # The run that wrote the predictions, if `predict_dataset` did: its settings and the rows it could not ask.
    errors_path, meta_path = output_paths(os.path.join(os.path.dirname(os.path.abspath(source)), ANSWERS_FILE))
    run = (read_json(meta_path) or {}).get("settings", {})
    skipped = [{**entry, "file": PREDICTIONS_FILE} for entry in bad_lines] + read_jsonl(errors_path)
    checked_against, unknown, missing = None, [], []
    if dataset is not None:
        run = {"dataset": dataset, "config": config or DEFAULT_DATASET_CONFIG, "split": split or "test"}
    if predictions_path is not None and run.get("dataset"):
        where = f"{run['dataset']} ({run.get('config')}/{run.get('split')})"
        try:
            ids = split_ids(run["dataset"], run.get("config"), run.get("split"), run.get("max_samples"))
        except ChartWizError as error:
            if dataset is not None:
                raise
            logger.warning("cannot check the predictions' ids against the split their run answered: %s", error)
        else:
            predictions, unknown, missing = check_ids(predictions, skipped, ids, where)
            skipped += unknown + missing
            checked_against, rows = where, len(ids)

    start = time.perf_counter()
    scores = score_predictions(predictions, bleu_tokenize=bleu_tokenize)
    seconds = time.perf_counter() - start
    if predictions:
        logger.info("Scored %d rows in %.2f s (%.0f rows/s)", len(predictions), seconds, len(predictions) / seconds)
    metrics = {
        "model": run.get("model"),
        "dataset": run.get("dataset"),
        "config": run.get("config"),
        "split": run.get("split"),
        "blank_images": run.get("blank_images"),
        "shuffled_images": run.get("shuffled_images"),
        "n": len(predictions),
        "rows": rows,
        "skipped": skipped,
        "checked_against": checked_against,
        "unknown_ids": [entry["id"] for entry in unknown],
        "missing_ids": [entry["id"] for entry in missing],
        "bleu_signature": signature if {"description", "summary"} & set(scores["by_task"]) else None,
        **scores,
    }
    write_json_atomic(os.path.join(out_dir, METRICS_FILE), metrics)
    write_text_atomic(os.path.join(out_dir, REPORT_FILE), render_report(metrics))
    draw_chart(metrics, os.path.join(out_dir, CHART_FILE))
    return metrics


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


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8-sig") as file:
        return file.read()


__all__ = [
    "Prediction",
    "blank_charts",
    "chart_identities",
    "check_ids",
    "evaluate_model",
    "load_split",
    "predict_dataset",
    "read_predictions",
    "score_predictions",
    "score_run",
    "shuffled_charts",
    "split_ids",
    "split_questions",
]
