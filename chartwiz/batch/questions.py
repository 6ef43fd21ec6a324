"""
The questions `chartwiz infer` and `chartwiz evaluate` answer: read from a LLaVA question file or a built dataset
split, their charts loaded from an image folder or the split's rows, and the chunk of them that one shard answers.
"""

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

from PIL import Image

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizValueError
from chartwiz.fingerprints import ContentDigests
from chartwiz.inference.images import load_chart_image
from chartwiz.names import CHART_TYPE_FOLDERS
from dataset_builder.aihub import BadRecord, find_in_image_folders, image_in_folder
from dataset_builder.rows import conversation_turns, without_image_placeholder

from .run_store import result_key


_AIHUB_IMAGE_FOLDERS = {f"img_{suffix}": chart_type for suffix, chart_type in CHART_TYPE_FOLDERS.items()}


# Where a question's chart is: a path relative to the image folder (a question file's `image`, loaded by `ImageFolder`)
# or the index of the dataset row that holds it (a built split, loaded by `DatasetImages`).
ChartLocation = Union[str, int]


@dataclass(frozen=True, kw_only=True)
class Question:
    """
    One question to answer: turn `turn` of the record `id`.

    Args:
        id (`str` or `int`, *optional*):
            The record's id as the input has it; `None` for a record that has none (it is a bad record).
        turn (`int`, *optional*):
            1-based turn of the question in its conversation; `None` where the record could not be read.
        question (`str`):
            The question, without the `<image>` placeholder.
        image (`ChartLocation`, *optional*):
            The image file relative to the image folder (`str`), or the dataset row that holds the chart (`int`).
        history (`tuple` of `(turn, question, reference)`, defaults to `()`):
            The earlier turns of the conversation; `reference` is `None` where the input gives no answer.
        reference (`str`, *optional*):
            The input's answer to this question, if any.
        chart_type (`str`, *optional*):
            The canonical chart type where the input says it.
        source (`str`, defaults to `""`):
            Where the question comes from (`file:line`, `file[index]`, `dataset[row]`), for error messages.
        record (`int`, defaults to 0):
            Position of the record in the input; shards split the input by records, so a conversation stays whole.
        error (`str`, *optional*):
            Why the question cannot be asked, found while reading the input.
        repeats (`str`, *optional*):
            Where the question with the same `(id, turn)` came first, for one that repeats it (a bad record).
    """

    id: Optional[Union[str, int]]
    turn: Optional[int]
    question: str
    image: Optional[ChartLocation] = None
    history: tuple[tuple[int, str, Optional[str]], ...] = ()
    reference: Optional[str] = None
    chart_type: Optional[str] = None
    source: str = ""
    record: int = 0
    error: Optional[str] = None
    repeats: Optional[str] = None

    @property
    def key(self) -> tuple:
        """
        What identifies the question in the answers and errors files (`result_key`): `(id, turn)`, or its source
        where it has no id or repeats an earlier question's (`repeats`: where that one is).
        """
        return result_key(self.id, self.turn, self.source, self.repeats)


def _mark_duplicates(questions: list[Question]) -> list[Question]:
    """A question whose (id, turn) came before is a bad record, keyed by its source: it must not hide the first."""
    first, marked = {}, []
    for question in questions:
        if question.id is not None and question.key in first:
            reason = f"id {question.id!r} turn {question.turn} appears again (first at {first[question.key]})"
            question = replace(question, error=reason, repeats=first[question.key])
        elif question.id is not None:
            first[question.key] = question.source
        marked.append(question)
    return marked


# Reading the inputs


def iter_json_records(path: str) -> Iterator[tuple[str, Any]]:
    """
    (source, record) for each record of a JSON file (an array, or one object) or a JSON Lines file (also when named
    `.json`, as LLaVA question files often are); a line that does not parse comes as `Unreadable`.
    """
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise ChartWizValueError(f"{path}: not UTF-8 text ({error})") from None
    head = text.lstrip()[:1]
    if not path.endswith(".jsonl") and head in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if head == "[":
                raise ChartWizValueError(f"{path}: the JSON array does not parse ({error})") from error
            data = None  # several objects: JSON Lines
        if data is not None:
            for index, record in enumerate(data if isinstance(data, list) else [data]):
                yield f"{name}[{index}]", record
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{number}", json.loads(line)
        except json.JSONDecodeError as error:
            yield f"{name}:{number}", Unreadable(f"JSON does not parse: {error}")


@dataclass(frozen=True)
class Unreadable:
    """A record of a JSON Lines file that does not parse, and why."""

    reason: str


def _chart_type_of(image: str) -> Optional[str]:
    # The AI-Hub folder an image sits in is authoritative for its chart type (docs/aihub-format.md).
    return _AIHUB_IMAGE_FOLDERS.get(os.path.basename(os.path.dirname(image)))


def read_question_file(path: str) -> list[Question]:
    """
    The questions of a question file in the original ChartWiz / LLaVA format, JSON (an array) or JSON Lines.

    Each record has an `id` (or `question_id`), an `image` (a path relative to the image folder) and either
    `conversations` (LLaVA `{"from": "human" | "gpt", "value": ...}` messages, read by the data layer's one reader,
    `dataset_builder.rows.conversation_turns`: every `human` message is a question, the `gpt` message right after it,
    if there is one, its reference answer) or `text` (one question, with an optional `answer`). A question without an
    answer (the last one of a conversation, or one followed by another question) is asked all the same, where a
    training row needs its answer; as context of a later turn it takes the model's own answer. An optional
    `chart_type` is passed through. A record that cannot be read becomes questions carrying the reason in `error`,
    never an exception: one bad record does not stop a run.
    """
    if not os.path.isfile(path):
        raise ChartWizFileNotFoundError(f"{path}: no such question file")
    questions = []
    for record_index, (source, record) in enumerate(iter_json_records(path)):
        questions.extend(_record_questions(record, source, record_index))
    return _mark_duplicates(questions)


def _record_questions(record: Any, source: str, record_index: int) -> list[Question]:
    def bad(reason, record_id=None, turn=None):
        return [Question(id=record_id, turn=turn, question="", source=source, record=record_index, error=reason)]

    if isinstance(record, Unreadable):
        return bad(record.reason)
    if not isinstance(record, dict):
        return bad(f"a record must be a JSON object, got {type(record).__name__}")
    record_id = record.get("id", record.get("question_id"))
    if record_id is None:
        return bad("missing field 'id'")
    if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
        return bad(f"'id' must be a string or an integer, got {record_id!r}")
    image = record.get("image")
    chart_type = record.get("chart_type") if isinstance(record.get("chart_type"), str) else None
    try:
        if "conversations" in record:
            turns = conversation_turns(record["conversations"])
        elif "text" in record:
            answer = record.get("answer")
            turns = [(without_image_placeholder(str(record["text"] or "")), answer if answer else None)]
        else:
            raise ChartWizValueError("the record needs 'conversations' (LLaVA messages) or 'text' (one question)")
    except ValueError as error:
        return bad(str(error), record_id, 1)
    if not isinstance(image, str) or not image.strip():
        return [
            Question(
                id=record_id, turn=turn, question="", source=source, record=record_index, error="missing field 'image'"
            )
            for turn in range(1, len(turns) + 1)
        ]
    chart_type = chart_type or _chart_type_of(image)
    questions, history = [], []
    for turn, (text, reference) in enumerate(turns, start=1):
        # As the training rows were built: an empty turn is skipped and is not context of the later ones.
        error = None if text else "the question is empty"
        questions.append(
            Question(
                id=record_id,
                turn=turn,
                question=text,
                image=image,
                history=tuple(history),
                reference=reference,
                chart_type=chart_type,
                source=source,
                record=record_index,
                error=error,
            )
        )
        if not error:
            history.append((turn, text, reference))
    return questions


def read_dataset_questions(dataset) -> list[Question]:
    """
    The questions of a split that `chartwiz data build` wrote (any config): one per row, `id` the row's id, the
    question the last user turn of `prompt`, the earlier turns (with their reference answers) its history and the
    `completion` its reference. The chart is looked up by row when it is needed (`DatasetImages`).
    """
    missing = {"id", "prompt", "image"} - set(dataset.column_names)
    if missing:
        raise ChartWizValueError(
            f"The dataset has no column {sorted(missing)}; expected a `chartwiz data build` split."
        )
    columns = [name for name in ("id", "prompt", "completion", "chart_type") if name in dataset.column_names]
    questions = []
    for index, row in enumerate(dataset.select_columns(columns)):
        source = f"dataset[{index}]"
        prompt = row["prompt"] or []
        if not prompt or prompt[-1].get("role") != "user":
            reason = "the prompt does not end with a user turn"
            questions.append(
                Question(id=row["id"], turn=None, question="", image=index, source=source, record=index, error=reason)
            )
            continue
        history, turn = [], 0
        for position, message in enumerate(prompt[:-1]):
            if message.get("role") == "user":
                turn += 1
                following = prompt[position + 1] if position + 1 < len(prompt) - 1 else None
                answer = following.get("content") if following and following.get("role") == "assistant" else None
                history.append((turn, message.get("content") or "", answer))
        completion = row.get("completion") or []
        reference = completion[0].get("content") if completion else None
        text = (prompt[-1].get("content") or "").strip()
        questions.append(
            Question(
                id=row["id"],
                turn=turn + 1,
                question=text,
                image=index,
                history=tuple(history),
                reference=reference,
                chart_type=row.get("chart_type"),
                source=source,
                record=index,
                error=None if text else "the question is empty",
            )
        )
    return _mark_duplicates(questions)


def load_split(dataset_path: str, config: str, split: str):
    """
    One split of one config of a dataset built by `chartwiz data build` (a local folder or a Hub repo); a path that
    is not there, a config or a split the dataset does not have are one-line errors naming them.
    """
    from datasets import load_dataset

    # Each build's card carries a fingerprint of its shards, so the cache never serves an older build.
    try:
        return load_dataset(dataset_path, config, split=split)
    except (OSError, ValueError) as error:  # no such folder or Hub dataset (offline too), config or split
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        kind = ChartWizFileNotFoundError if isinstance(error, OSError) else ChartWizValueError
        raise kind(f"{dataset_path}: cannot load config {config!r}, split {split!r} ({reason})") from error


class ImageFolder:
    """
    Loads a question's image from a folder: `image` relative to it, and inside it (a path that leads out is a bad
    record, as in `chartwiz data build`); a bare file name that is not there is also looked up in the ten chart-type
    folders of an AI-Hub `img_data/` tree (as the GPT question files name them).

    Args:
        root (`str`): the image folder.
    """

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise ChartWizFileNotFoundError(f"{root}: no such image folder")
        self.root = root
        self.digests = ContentDigests()

    def resolve(self, question: Question) -> tuple[str, Optional[str]]:
        """
        (path, chart type or None) of the question's image, by the data builder's rule (`image_in_folder`): a path
        outside the folder (absolute, or `..` out of it) is refused, and so is a bare name in two chart-type folders.
        """
        path = image_in_folder(self.root, question.image)
        if not os.path.isfile(path) and os.path.basename(question.image) == question.image:
            try:
                found = find_in_image_folders(self.root, question.image)
            except BadRecord as error:
                raise ChartWizValueError(f"{self.root}: {error}") from None
            if found is not None:
                return found
        return path, None

    def __call__(self, question: Question) -> tuple[Image.Image, Optional[str]]:
        path, chart_type = self.resolve(question)
        return load_chart_image(path), chart_type

    def image_digest(self, question: Question) -> str:
        """The sha256 of the question's image file, what its answer depends on (`question_fingerprint`)."""
        return self.digests.of_file(self.resolve(question)[0])


class DatasetImages:
    """
    Loads a question's chart from its dataset row, undecoded until needed so that no image is held in memory.

    Args:
        dataset (`datasets.Dataset`): the split the questions were read from.
    """

    def __init__(self, dataset):
        from datasets import Image as ImageFeature

        self.images = dataset.select_columns(["image"]).cast_column("image", ImageFeature(decode=False))
        self.digests = ContentDigests()

    def __call__(self, question: Question) -> tuple[Image.Image, Optional[str]]:
        stored = self.images[question.image]["image"] or {}
        if stored.get("bytes"):
            return load_chart_image(stored["bytes"], name=f"{question.source}: the image"), None
        if not stored.get("path"):
            raise ChartWizValueError(f"{question.source}: the row has no image")
        return load_chart_image(stored["path"]), None

    def image_digest(self, question: Question) -> str:
        """The sha256 of the row's image bytes (or of the file it points at)."""
        stored = self.images[question.image]["image"] or {}
        if stored.get("bytes"):
            return ContentDigests.of_bytes(stored["bytes"])
        return self.digests.of_file(stored["path"]) if stored.get("path") else "no image"


def select_chunk(questions: Sequence[Question], num_chunks: int, chunk_idx: int) -> list[Question]:
    """
    The questions of chunk `chunk_idx` of `num_chunks`: contiguous runs of records whose sizes differ by at most
    one, so a conversation is never split and the chunks together are exactly the input.
    """
    if num_chunks < 1:
        raise ChartWizValueError(f"--num-chunks must be at least 1, got {num_chunks}")
    if not 0 <= chunk_idx < num_chunks:
        raise ChartWizValueError(
            f"--chunk-idx must be in 0..{num_chunks - 1} for --num-chunks {num_chunks}, got {chunk_idx}"
        )
    records = max((question.record for question in questions), default=-1) + 1
    start, end = chunk_idx * records // num_chunks, (chunk_idx + 1) * records // num_chunks
    return [question for question in questions if start <= question.record < end]


__all__ = [
    "ChartLocation",
    "DatasetImages",
    "ImageFolder",
    "Question",
    "Unreadable",
    "iter_json_records",
    "load_split",
    "read_dataset_questions",
    "read_question_file",
    "select_chunk",
]
