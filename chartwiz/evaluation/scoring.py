"""
Scoring a predictions file: the task metrics by task and chart type, checked against the split it answers, written as
`metrics.json` and the report (`report.py`).
"""

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Optional

from chartwiz.batch.questions import Unreadable, iter_json_records
from chartwiz.batch.run_store import output_paths, read_json, read_jsonl
from chartwiz.errors import ChartWizError, ChartWizFileNotFoundError, ChartWizValueError
from chartwiz.files import write_json_atomic, write_text_atomic
from chartwiz.names import DEFAULT_DATASET_CONFIG

from .metrics import DEFAULT_BLEU_TOKENIZE, TASK_METRICS, TASKS, bleu_signature, score_task
from .prediction import ANSWERS_FILE, PREDICTION_FIELDS, Prediction, load_split_rows
from .report import CHART_FILE, PREDICTIONS_FILE, REPORT_FILE, draw_chart, render_report


logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
NO_CHART_TYPE = "unknown"


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


def split_ids(dataset_path: str, config: str, split: str, max_samples: Optional[int] = None) -> list[str]:
    """The ids of a built split's rows (its first `max_samples`), as a predictions file names them."""
    return [str(row_id) for row_id in load_split_rows(dataset_path, config, split, max_samples)["id"]]


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
        _copy_predictions(source, target, out_dir)
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


def _copy_predictions(source: str, target: str, out_dir: str) -> None:
    """Copies an outside predictions file into the report folder (a JSON array as JSON Lines), so it re-scores."""
    content = _read_text(source)
    if content.lstrip()[:1] == "[" and not source.endswith(".jsonl"):  # a JSON array, kept as JSON Lines
        content = "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in iter_json_records(source))
    if os.path.exists(target) and _read_text(target) != content:
        raise ChartWizValueError(f"{out_dir} already holds another {PREDICTIONS_FILE}: choose another --out.")
    write_text_atomic(target, content)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8-sig") as file:
        return file.read()


__all__ = ["check_ids", "read_predictions", "score_predictions", "score_run", "split_ids"]
