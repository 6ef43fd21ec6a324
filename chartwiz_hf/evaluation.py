"""Scoring ChartWiz on a built dataset: batched greedy answers, the task metrics by task and chart type, a report."""

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

from .metrics import DEFAULT_BLEU_TOKENIZE, TASK_METRICS, TASKS, bleu_signature, score_task


logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CHART_FILE = "report.png"
CONFIGS = ("pretrain", "finetune", "gpt", "all")
PREDICTION_FIELDS = ("id", "task", "chart_type", "prediction", "reference")
# The two metrics of each task drawn in report.png.
CHART_METRICS = {
    "table": ("rms_f1", "rms_units_f1"),
    "description": ("rouge_l", "bleu"),
    "summary": ("rouge_l", "bleu"),
    "qa": ("relaxed_accuracy", "exact_match"),
}
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


@dataclass
class Example:
    """A dataset row ready to be asked: the question, the earlier turns, the reference and the row's index."""

    index: int
    id: str
    task: str
    chart_type: str
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)
    reference: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Predictions files


def read_predictions(path: str) -> tuple[list[Prediction], list[dict]]:
    """
    The predictions of a JSON Lines file (`id`, `task`, `chart_type` (may be empty or absent), `prediction`,
    `reference`), and `{"line": n, "reason": ...}` for each line that cannot be scored (it does not parse, lacks a
    field, names an unknown task or repeats an id); blank lines are ignored.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such predictions file")
    predictions, skipped, seen = [], [], set()
    with open(path, encoding="utf-8-sig") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                prediction = _prediction_from_json(line)
            except ValueError as error:
                skipped.append({"line": number, "reason": str(error)})
                continue
            if prediction.id in seen:
                skipped.append({"line": number, "id": prediction.id, "reason": f"id {prediction.id!r} repeats"})
                continue
            seen.add(prediction.id)
            predictions.append(prediction)
    return predictions, skipped


def _prediction_from_json(line: str) -> Prediction:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"JSON does not parse: {error}") from None
    if not isinstance(record, dict):
        raise ValueError("a line should hold a JSON object")
    record.setdefault("chart_type", "")
    if record["chart_type"] is None:
        record["chart_type"] = ""
    for name in PREDICTION_FIELDS:
        if name not in record:
            raise ValueError(f"missing field {name!r}")
        if not isinstance(record[name], str):
            raise ValueError(f"field {name!r} should be a string, got {type(record[name]).__name__}")
    if record["task"] not in TASK_METRICS:
        raise ValueError(f"unknown task {record['task']!r} (expected one of {', '.join(TASKS)})")
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


def example_from_row(index: int, row: dict) -> Example:
    """
    The question of a dataset row (TRL's conversational prompt-completion format): the last user message, after the
    earlier turns as context; raises `ValueError` saying what is wrong with the row. A pretraining row has an
    empty prompt (the image alone); it is asked the original table instruction, as a stage-2 model was taught.
    """
    from dataset_builder.rows import INSTRUCTIONS

    task, prompt, completion = row.get("task"), row.get("prompt"), row.get("completion")
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}")
    if not isinstance(prompt, list) or not prompt or not all(isinstance(message, dict) for message in prompt):
        raise ValueError("the prompt should be a non-empty list of messages")
    roles = [message.get("role") for message in prompt]
    if roles != ["user", "assistant"] * (len(prompt) // 2) + ["user"]:
        raise ValueError(f"the prompt's turns should alternate user and assistant and end with the user, got {roles}")
    texts = [str(message.get("content") or "").strip() for message in prompt]
    question = texts[-1]
    if not question and task == "table" and len(prompt) == 1:
        question = INSTRUCTIONS["table"][0]
    history = list(zip(texts[0:-1:2], texts[1:-1:2]))
    if not question or any(not asked for asked, _ in history):
        raise ValueError("a user turn of the prompt is empty")
    if not isinstance(completion, list) or not completion or not isinstance(completion[0], dict):
        raise ValueError("the completion should be a list holding the assistant's message")
    reference = completion[0].get("content")
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError("the reference answer is empty")
    return Example(index, str(row.get("id")), task, str(row.get("chart_type") or ""), question, history, reference)


def generate_batch(model, processor, examples: Sequence[Example], images: Sequence, max_new_tokens: int) -> list[str]:
    """Greedy answers to one batch of examples about their charts: the one step a batch-inference engine replaces."""
    from .inference import generate_answers, prepare_inputs

    inputs = prepare_inputs(processor, images, [ex.question for ex in examples], [ex.history for ex in examples])
    return generate_answers(model, processor, inputs, max_new_tokens=max_new_tokens)


def predict_dataset(
    model,
    processor,
    dataset,
    out_dir: str,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    progress: bool = True,
) -> dict:
    """
    Answers every row of `dataset` that `out_dir/predictions.jsonl` does not hold yet, longest prompts first in
    batches of `batch_size`, appending each batch's lines as it finishes: an interrupted run goes on where it
    stopped, nothing asked twice. Rows that cannot be asked (a bad prompt, an image that does not decode, a
    question the model refuses) go to `skipped.jsonl` with the reason. Returns counts and timings of this call.
    """
    from tqdm.auto import tqdm

    predictions_path = os.path.join(out_dir, PREDICTIONS_FILE)
    skipped_path = os.path.join(out_dir, SKIPPED_FILE)
    done = _finished_ids(predictions_path) | _finished_ids(skipped_path)

    todo, skipped = [], []
    seen = set()
    text_columns = dataset.select_columns(["id", "task", "chart_type", "prompt", "completion"])
    for index, row in enumerate(text_columns):
        row_id = str(row["id"])
        if row_id in done:
            seen.add(row_id)
            continue
        if row_id in seen:
            skipped.append({"id": row_id, "reason": f"row {index}: id {row_id!r} repeats"})
            continue
        seen.add(row_id)
        try:
            todo.append(example_from_row(index, row))
        except ValueError as error:
            skipped.append({"id": row_id, "task": row.get("task"), "reason": f"row {index}: {error}"})
    # Longest prompts first: similar lengths share a batch (less padding) and a batch too big for memory fails early.
    lengths = _prompt_lengths(processor, todo)
    todo = [example for _, example in sorted(zip(lengths, todo), key=lambda pair: -pair[0])]

    images = dataset.select_columns(["image"])
    answered, start = 0, time.perf_counter()
    with (
        open(predictions_path, "a", encoding="utf-8") as predictions_file,
        open(skipped_path, "a", encoding="utf-8") as skipped_file,
        tqdm(total=len(todo), desc="Answering", unit="question", disable=not progress) as bar,
    ):
        _append(skipped_file, [json.dumps(entry, ensure_ascii=False) for entry in skipped])
        for offset in range(0, len(todo), batch_size):
            batch = todo[offset : offset + batch_size]
            ready, charts, failed = _load_images(images, batch)
            answers, refused = _answer(model, processor, ready, charts, max_new_tokens)
            lines = [
                Prediction(example.id, example.task, example.chart_type, answer, example.reference).to_json()
                for example, answer in answers
            ]
            _append(predictions_file, lines)
            _append(skipped_file, [json.dumps(entry, ensure_ascii=False) for entry in failed + refused])
            skipped += failed + refused
            answered += len(lines)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    return {"answered": answered, "skipped": len(skipped), "already_done": len(done), "seconds": seconds}


def _finished_ids(path: str) -> set[str]:
    """Ids of a JSON Lines file written by `predict_dataset`, first cutting off a last line an interruption left
    half written."""
    if not os.path.isfile(path):
        return set()
    with open(path, "rb+") as file:
        data = file.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            file.truncate(end)
    ids = set()
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: not a line this command wrote; choose another --out") from None
    return ids


def _append(file, lines: Sequence[str]) -> None:
    # One write per batch, flushed: a kill between batches loses nothing, a kill inside one leaves a partial line.
    if lines:
        file.write("".join(line + "\n" for line in lines))
        file.flush()


def _prompt_lengths(processor, examples: Sequence[Example]) -> list[int]:
    if not examples:
        return []
    texts = [
        " ".join([*(part for turn in example.history for part in turn), example.question]) for example in examples
    ]
    return [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _load_images(images, batch: Sequence[Example]):
    ready, charts, failed = [], [], []
    for example in batch:
        try:
            image = images[example.index]["image"]
            if image is None:
                raise ValueError("the row has no image")
            charts.append(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:
            failed.append({"id": example.id, "task": example.task, "reason": f"the chart cannot be read: {error}"})
            continue
        ready.append(example)
    return ready, charts, failed


def _answer(model, processor, examples, images, max_new_tokens):
    """(example, answer) pairs; when the batch fails, each example alone, so one bad row costs only itself."""
    if not examples:
        return [], []
    try:
        return list(zip(examples, generate_batch(model, processor, examples, images, max_new_tokens))), []
    except ValueError as error:
        if len(examples) == 1:
            return [], [_refusal(examples[0], error)]
    answers, refused = [], []
    for example, image in zip(examples, images):
        try:
            answers.append((example, generate_batch(model, processor, [example], [image], max_new_tokens)[0]))
        except ValueError as error:
            refused.append(_refusal(example, error))
    return answers, refused


def _refusal(example: Example, error: Exception) -> dict:
    return {"id": example.id, "task": example.task, "reason": f"cannot be answered: {error}"}


# ----------------------------------------------------------------------------------------------------------------
# The two entry points


def evaluate_model(
    model_name_or_path: str,
    dataset_path: str,
    out_dir: str,
    config: str = "finetune",
    split: str = "test",
    max_samples: Optional[int] = None,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    adapter: Optional[str] = None,
    device: Optional[str] = None,
    bleu_tokenize: str = DEFAULT_BLEU_TOKENIZE,
    progress: bool = True,
) -> dict:
    """
    Answers a split of a built dataset with greedy, batched generation, scores the answers and writes `out_dir`:
    `predictions.jsonl` (re-scorable), `metrics.json`, `report.md` and `report.png`. Running again into the same
    `out_dir` resumes: rows already answered are not asked again. Returns the metrics.

    Args:
        model_name_or_path (`str`): ChartWiz checkpoint directory or Hub repo.
        dataset_path (`str`): a dataset built by `chartwiz data build` (a local folder or a Hub repo).
        out_dir (`str`): the report folder.
        config (`str`, *optional*, defaults to `"finetune"`): `pretrain`, `finetune`, `gpt` or `all`.
        split (`str`, *optional*, defaults to `"test"`): the split to answer.
        max_samples (`int`, *optional*): only the first `max_samples` rows of the split.
        batch_size (`int`, *optional*, defaults to 8): questions generated together.
        max_new_tokens (`int`, *optional*, defaults to 512): the longest answer.
        adapter (`str`, *optional*): a PEFT (LoRA) adapter folder applied on top of the model.
        device (`str`, *optional*): where to run the model (default: where it loads).
        bleu_tokenize (`str`, *optional*, defaults to `"intl"`): sacrebleu's tokenizer for `bleu`.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.
    """
    if config not in CONFIGS:
        raise ValueError(f"Unknown config {config!r}; choose from {', '.join(CONFIGS)}.")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max-samples must be at least 1, got {max_samples}.")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    bleu_signature(bleu_tokenize)  # a bad tokenizer fails now, not after the generation
    run = {
        "model": model_name_or_path,
        "adapter": adapter,
        "dataset": dataset_path,
        "config": config,
        "split": split,
        "max_samples": max_samples,
        "max_new_tokens": max_new_tokens,
    }
    _check_run(out_dir, run)
    dataset = load_split(dataset_path, config, split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))

    from .inference import load_chartwiz

    model, processor = load_chartwiz(model_name_or_path, device=device, adapter=adapter)
    # Recorded once the dataset and the model have loaded, so a mistyped path does not claim the folder.
    _write_json(os.path.join(out_dir, RUN_FILE), run)
    counts = predict_dataset(model, processor, dataset, out_dir, batch_size, max_new_tokens, progress=progress)
    if counts["answered"]:
        logger.info(
            "Answered %d questions in %.1f s (%.2f questions/s)",
            counts["answered"],
            counts["seconds"],
            counts["answered"] / counts["seconds"],
        )
    return score_run(out_dir, bleu_tokenize=bleu_tokenize, rows=len(dataset))


def score_run(
    out_dir: str,
    predictions_path: Optional[str] = None,
    bleu_tokenize: str = DEFAULT_BLEU_TOKENIZE,
    rows: Optional[int] = None,
) -> dict:
    """
    Scores a predictions file (default: `out_dir/predictions.jsonl`, which an outside file is copied to) and writes
    `metrics.json`, `report.md` and `report.png` into `out_dir`. Returns the metrics.
    """
    signature = bleu_signature(bleu_tokenize)
    target = os.path.join(out_dir, PREDICTIONS_FILE)
    source = predictions_path or target
    predictions, bad_lines = read_predictions(source)
    os.makedirs(out_dir, exist_ok=True)
    if predictions_path is not None and os.path.abspath(source) != os.path.abspath(target):
        content = _read_text(source)
        if os.path.exists(target) and _read_text(target) != content:
            raise ValueError(f"{out_dir} already holds another {PREDICTIONS_FILE}: choose another --out.")
        with open(target, "w", encoding="utf-8") as copy:
            copy.write(content)
    run = _read_json(os.path.join(os.path.dirname(os.path.abspath(source)), RUN_FILE)) or {}
    skipped = [{**entry, "file": PREDICTIONS_FILE} for entry in bad_lines]
    skipped_path = os.path.join(os.path.dirname(os.path.abspath(source)), SKIPPED_FILE)
    if os.path.isfile(skipped_path):
        with open(skipped_path, encoding="utf-8") as file:
            skipped += [json.loads(line) for line in file if line.strip()]

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
        "n": len(predictions),
        "rows": rows,
        "skipped": skipped,
        "bleu_signature": signature if {"description", "summary"} & set(scores["by_task"]) else None,
        **scores,
    }
    _write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as file:
        file.write(render_report(metrics))
    draw_chart(metrics, os.path.join(out_dir, CHART_FILE))
    return metrics


def _check_run(out_dir: str, run: dict) -> None:
    """Checks that `out_dir` is new or holds an earlier, interrupted try of the same run."""
    earlier = _read_json(os.path.join(out_dir, RUN_FILE))
    if earlier is not None and earlier != run:
        changed = ", ".join(
            f"{key} {earlier.get(key)!r} -> {run[key]!r}" for key in run if earlier.get(key) != run[key]
        )
        raise ValueError(
            f"{out_dir} holds the predictions of another run ({changed}): choose another --out or delete it."
        )
    if earlier is None and os.path.exists(os.path.join(out_dir, PREDICTIONS_FILE)):
        raise ValueError(f"{out_dir} holds a {PREDICTIONS_FILE} of unknown origin: choose another --out.")


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, ensure_ascii=False, indent=2)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8-sig") as file:
        return file.read()


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def load_split(dataset_path: str, config: str, split: str):
    """One split of one config of a dataset built by `chartwiz data build` (a local folder or a Hub repo)."""
    from datasets import load_dataset

    # Each build's card carries a fingerprint of its shards, so the cache never serves an older build.
    try:
        return load_dataset(dataset_path, config, split=split)
    except ValueError as error:
        raise ValueError(f"{dataset_path}: cannot load config {config!r}, split {split!r} ({error})") from error


# ----------------------------------------------------------------------------------------------------------------
# Report


def _format(value) -> str:
    return f"{value:.1f}"


def render_report(metrics: dict) -> str:
    """The Markdown report: what was scored, one table by task, one table per task by chart type, skipped rows."""
    by_task = metrics["by_task"]
    lines = ["# ChartWiz evaluation", ""]
    source = f"config `{metrics['config']}`, split `{metrics['split']}`" if metrics.get("config") else ""
    if metrics.get("model"):
        lines.append(f"- Model: `{metrics['model']}`")
    if metrics.get("dataset"):
        lines.append(f"- Dataset: `{metrics['dataset']}` ({source})")
    rows = f" of {metrics['rows']}" if metrics.get("rows") is not None else ""
    lines.append(f"- Scored: {metrics['n']}{rows} rows, {len(metrics['skipped'])} skipped (listed below)")
    lines.append(f"- Predictions: `{PREDICTIONS_FILE}` (re-score with `chartwiz evaluate --predictions`)")
    lines += ["", "All metrics in percent. `rms_f1` is the mean of each table's F1 (see docs/metrics.md)."]
    if metrics.get("bleu_signature"):
        lines.append(f"BLEU: sacrebleu `{metrics['bleu_signature']}`.")
    lines += ["", "## By task", ""]
    columns = list(dict.fromkeys(metric for task in by_task for metric in TASK_METRICS[task]))
    lines.append("| task | n | " + " | ".join(columns) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for task, scores in by_task.items():
        cells = [_format(scores[metric]) if metric in scores else "" for metric in columns]
        lines.append(f"| {task} | {scores['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## By chart type", "", f"![scores by chart type]({CHART_FILE})", ""]
    for task in by_task:
        lines += [f"### {task}", ""]
        lines.append("| chart type | n | " + " | ".join(TASK_METRICS[task]) + " |")
        lines.append("| --- | ---: | " + " | ".join("---:" for _ in TASK_METRICS[task]) + " |")
        for chart_type, tasks in metrics["by_chart_type"].items():
            if task in tasks:
                cells = [_format(tasks[task][metric]) for metric in TASK_METRICS[task]]
                lines.append(f"| {chart_type} | {tasks[task]['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    if metrics["skipped"]:
        lines += ["## Skipped", ""]
        for entry in metrics["skipped"]:
            where = f"line {entry['line']}" if "line" in entry else f"`{entry.get('id')}`"
            lines.append(f"- {where}: {entry['reason']}")
        lines.append("")
    return "\n".join(lines)


_FONT_FAMILY = None


def _korean_font_family() -> str:
    """Registers the bundled NanumGothic with matplotlib once; chart types and titles may be Korean."""
    global _FONT_FAMILY
    if _FONT_FAMILY is None:
        from matplotlib import font_manager

        from .image_processing_chartwiz import bundled_font_path

        font_manager.fontManager.addfont(bundled_font_path())
        _FONT_FAMILY = font_manager.FontProperties(fname=bundled_font_path()).get_name()
    return _FONT_FAMILY


def draw_chart(metrics: dict, path: str) -> None:
    """
    report.png: one panel per task, the task's two main metrics as horizontal bars (value written at the end) for
    all its rows and then for each chart type.
    """
    import matplotlib
    from matplotlib.figure import Figure

    tasks = list(metrics["by_task"])
    groups = {
        task: [
            ("all", metrics["by_task"][task]),
            *((name, scores[task]) for name, scores in metrics["by_chart_type"].items() if task in scores),
        ]
        for task in tasks
    }
    columns = 2 if len(tasks) > 1 else 1
    rows = max(1, (len(tasks) + 1) // 2)
    tallest = max((len(entries) for entries in groups.values()), default=1)
    with matplotlib.rc_context({"font.family": _korean_font_family(), "axes.unicode_minus": False}):
        # A bare Figure draws with Agg and leaves pyplot's global state (and any GUI backend) alone.
        figure = Figure(figsize=(7 * columns, rows * (1.2 + 0.42 * tallest)), layout="constrained")
        axes_grid = figure.subplots(rows, columns, squeeze=False)
        for axes, task in zip(axes_grid.flat, tasks):
            names = CHART_METRICS[task]
            height = 0.8 / len(names)
            for offset, metric in enumerate(names):
                positions = [index + (offset - (len(names) - 1) / 2) * height for index in range(len(groups[task]))]
                bars = axes.barh(
                    positions, [scores[metric] for _, scores in groups[task]], height=height, label=metric
                )
                axes.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)
            axes.set_yticks(
                range(len(groups[task])), [f"{name} (n={scores['n']})" for name, scores in groups[task]], fontsize=8
            )
            axes.invert_yaxis()  # "all" on top
            axes.set_xlim(0, 112)  # room for the value written after a full bar
            axes.set_xticks(range(0, 101, 20))
            axes.set_xlabel("%")
            axes.set_title(task)
            axes.grid(axis="x", alpha=0.3)
            axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(names), fontsize=8, frameon=False)
        for axes in list(axes_grid.flat)[len(tasks) :]:
            axes.set_axis_off()
        if not tasks:
            axes_grid.flat[0].text(0.5, 0.5, "no rows scored", ha="center", va="center")
        source = os.path.basename(os.path.normpath(metrics.get("model") or "predictions"))
        if metrics.get("config"):
            source += f" on {metrics['config']} / {metrics['split']}"
        figure.suptitle(f"ChartWiz evaluation: {source}")
        figure.savefig(path, dpi=100)


__all__ = [
    "CONFIGS",
    "Example",
    "Prediction",
    "draw_chart",
    "evaluate_model",
    "example_from_row",
    "generate_batch",
    "load_split",
    "predict_dataset",
    "read_predictions",
    "render_report",
    "score_predictions",
    "score_run",
]
