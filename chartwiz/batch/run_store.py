"""
The files of a resumable run and the one check that a rerun is the same run: an answers file with its errors file
(JSON Lines appended batch by batch) and its settings file, the fingerprints each result carries, and which earlier
results still hold. `chartwiz infer`, `chartwiz evaluate` and the quickstart keep their progress through it.
"""

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Optional

from chartwiz.errors import ChartWizValueError
from chartwiz.files import write_json_atomic, write_text_atomic
from chartwiz.fingerprints import changed_files, describe_changes, digest


logger = logging.getLogger(__name__)


def result_key(question_id, turn: Optional[int], source: Optional[str], repeats: Optional[str] = None) -> tuple:
    """
    What identifies a question's result in the answers and errors files, the one rule behind `Question.key` and
    `row_key`: `(id, turn)`, or `(None, turn, source)` for a question without an id or one that repeats an earlier
    one's (whose `(id, turn)` belongs to the first).
    """
    if question_id is None or repeats is not None:
        return (None, turn, source)
    return (question_id, turn)


def row_key(row: dict) -> tuple:
    """What identifies a row of an answers or errors file, as `Question.key` identifies its question (`result_key`)."""
    return result_key(row.get("id"), row.get("turn"), row.get("source"), row.get("repeats"))


def output_paths(answers_path: str) -> tuple[str, str]:
    """The errors file and the settings file that go with an answers file: `X.errors.jsonl`, `X.meta.json`."""
    stem = answers_path[: -len(".jsonl")] if answers_path.endswith(".jsonl") else answers_path
    return f"{stem}.errors.jsonl", f"{stem}.meta.json"


def read_jsonl(path: str, repair: bool = False) -> list[dict]:
    """
    The rows of a JSON Lines file written by `JsonlAppender`. A last line without its newline is what a killed
    writer leaves: with `repair` it is cut off the file (and a warning logged), otherwise ignored. Any other line that
    does not parse is an error naming it.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as file:
        data = file.read()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        if repair:
            with open(path, "r+b") as file:
                file.truncate(complete)
            logger.warning("%s: dropped an unfinished last line (a run was stopped while writing it)", path)
        data = data[:complete]
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ChartWizValueError(
                f"{path}:{number}: not a JSON line ({error}); was the file edited by hand?"
            ) from error
    return rows


class JsonlAppender:
    """
    Appends rows to a JSON Lines file, one batch per `write`: flushed and fsynced, so a killed run loses at most the
    batch being written, and a torn last line is found by `read_jsonl`.
    """

    def __init__(self, path: str, fsync: bool = True):
        self.path, self.fsync = path, fsync
        self.file = open(path, "a", encoding="utf-8")

    def write(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        self.file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_json(path: str) -> Optional[dict]:
    """The JSON object in `path`, or None where there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ChartWizValueError(f"{path}: not a JSON file ({error}); was it edited by hand?") from None


def changed_settings(stored: dict, settings: dict, names: Optional[Sequence[str]] = None) -> list[str]:
    """
    The names whose values differ between the settings a run stored and those of this one (of `names` only, in their
    order, where given; else of both, sorted). `settings` is compared as it reads back from a JSON file (tuples are
    lists there), so that a rerun with the same settings is the same run.
    """
    settings = json.loads(json.dumps(settings))
    names = sorted(set(stored) | set(settings)) if names is None else list(names)
    return [name for name in names if stored.get(name) != settings.get(name)]


def check_settings(answers_path: str, settings: dict, info: Optional[dict] = None) -> Optional[dict]:
    """
    Writes the settings file of a new answers file, or checks that an existing one was made with the same settings
    and returns what it holds: answers of another model or generation setting must not be mixed into it silently.
    """
    _, meta_path = output_paths(answers_path)
    settings = json.loads(json.dumps(settings))  # as it reads back from the file (tuples become lists)
    meta = read_json(meta_path)
    if meta is not None:
        stored = meta.get("settings", {})
        changed = changed_settings(stored, settings)
        if changed:
            differences = "; ".join(
                f"{name}: {stored.get(name)!r} then, {settings.get(name)!r} now" for name in changed
            )
            raise ChartWizValueError(
                f"{answers_path} holds answers made with other settings ({differences}). Rerun with the same settings "
                "to resume, or --restart to start over, or write to another --answers file."
            )
        return meta
    if os.path.exists(answers_path) and os.path.getsize(answers_path) > 0:
        raise ChartWizValueError(
            f"{answers_path} exists but has no settings file {meta_path}, so its answers cannot be checked against "
            "this run; move it away, pass --restart to replace it, or write to another --answers file."
        )
    write_json_atomic(meta_path, {"settings": settings, "info": info or {}})
    return None


def write_jsonl_atomic(path: str, rows) -> None:
    """`rows` as a whole JSON Lines file, replacing `path` at once (`write_text_atomic`)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def question_fingerprint(question, load_image: Optional[Callable] = None) -> str:
    """
    A digest of what the answer to `question` depends on besides the model and the generation settings: its text,
    the earlier turns and the reference, the image's name and the sha256 of its bytes (where `load_image` has an
    `image_digest`, as `ImageFolder` and `DatasetImages` do), or the reason it cannot be asked.
    """
    image_sha256 = None
    image_digest = getattr(load_image, "image_digest", None)
    if image_digest is not None and question.error is None and question.image is not None:
        try:
            image_sha256 = image_digest(question)
        except (OSError, ValueError) as error:  # the answer is an error now, and something else once it is fixed
            image_sha256 = f"unreadable: {error}"
    return digest(
        {
            "id": question.id,
            "turn": question.turn,
            "question": question.question,
            "history": question.history,
            "reference": question.reference,
            "chart_type": question.chart_type,
            "image": question.image if isinstance(question.image, str) else None,
            "image_sha256": image_sha256,
            "error": question.error,
        }
    )


def describe_run_change(before: Optional[dict], after: dict) -> str:
    """Why results made under the fingerprints `before` do not hold under `after`, in words."""
    if not before:
        return "they were made by an earlier run whose model files were not recorded"
    parts = []
    for part in ("model", "adapter"):
        old, new = before.get(part), after.get(part)
        if old != new:
            files = describe_changes(old or {}, new or {}) if isinstance(old, dict) and isinstance(new, dict) else ""
            parts.append(f"the {part}'s files changed" + (f" ({files})" if files else ""))
    old, new = before.get("generation") or {}, after.get("generation") or {}
    if old != new:
        parts.append(f"the generation settings changed ({', '.join(changed_files(old, new))})")
    return "; ".join(parts) or "they were made by another run"


# Why an earlier result is left out when its question is no longer asked (an edited or deleted record).
NOT_IN_INPUT = "no longer in the input"


def stale_reason(row: dict, run_key: str, question_keys: dict, run_change: str) -> Optional[str]:
    """
    Why a row of an answers or errors file no longer holds for the run whose fingerprints digest to `run_key` and
    whose input's questions have the fingerprints `question_keys` (`{key: question_fingerprint}`), or `None` where it
    still does. `run_change` is the reason given for a row another run (model, adapter, generation) made.
    """
    key, stored = row_key(row), row.get("fingerprint")
    if key not in question_keys:
        return NOT_IN_INPUT
    if not isinstance(stored, dict):
        return "written without a fingerprint"
    if stored.get("run") != run_key:
        return run_change
    if stored.get("question") != question_keys[key]:
        return "the question or its image changed"
    return None


def keep_results(path: str, run_key: str, question_keys: dict, run_change: str) -> tuple[list[dict], dict]:
    """
    The rows of an answers or errors file whose fingerprints still hold for this run (`stale_reason`), and `{reason:
    count}` for the others, which are taken out of the file (rewritten whole, atomically) so that their questions are
    asked again.
    """
    kept, dropped = [], {}
    for row in read_jsonl(path, repair=True):
        reason = stale_reason(row, run_key, question_keys, run_change)
        if reason is None:
            kept.append(row)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    if dropped:
        write_jsonl_atomic(path, kept)
    return kept, dropped


__all__ = [
    "NOT_IN_INPUT",
    "JsonlAppender",
    "changed_settings",
    "check_settings",
    "describe_run_change",
    "keep_results",
    "output_paths",
    "question_fingerprint",
    "read_json",
    "read_jsonl",
    "result_key",
    "row_key",
    "stale_reason",
    "write_jsonl_atomic",
]
