"""Training rows (TRL's conversational prompt-completion format) from charts and GPT conversations."""

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from chartwiz.names import FINETUNE_TASKS, IMAGE_TOKEN, INSTRUCTIONS, normalize_text

from .aihub import BadRecord, ChartRecord, find_in_image_folders


def instruction_for(task: str, record_id: str, paraphrases: bool) -> str:
    """The task's instruction: the original one, or a paraphrase chosen deterministically from the record id."""
    choices = INSTRUCTIONS[task]
    if not paraphrases:
        return choices[0]
    digest = hashlib.sha1(record_id.encode("utf-8")).digest()
    return choices[int.from_bytes(digest[:4], "big") % len(choices)]


def check_image(path: str) -> None:
    """
    Raises `BadRecord` unless `path` is an image that decodes to the end and has at most `PIL.Image.MAX_IMAGE_PIXELS`
    pixels (PIL's decompression-bomb limit, which training would otherwise hit image by image).
    """
    if not os.path.isfile(path):
        raise BadRecord(f"image {path} is missing")
    try:
        with warnings.catch_warnings():
            # Above the limit PIL only warns (it raises above twice the limit): both are bad records here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                # JPEG decodes at 1/8 scale through DCT scaling: every byte is still read, so truncation shows, 8x
                # faster.
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadRecord(f"image {path} is too large: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadRecord(f"image {path} does not decode: {error}") from None


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def row(row_id: str, image_path: str, chart_type: str, task: str, prompt: list, completion_text: str) -> dict:
    """
    A training row, the one constructor of every config's rows: its texts in NFC (`normalize_text`), as the model
    reads every prompt, whatever form the annotation or conversation file wrote them in.
    """
    return {
        "id": row_id,
        "image": {"path": image_path, "bytes": None},
        "chart_type": chart_type,
        "task": task,
        "prompt": [{**message, "content": normalize_text(message["content"])} for message in prompt],
        "completion": [assistant(normalize_text(completion_text))],
    }


def pretrain_row(record: ChartRecord) -> dict:
    # Projector pretraining learns from the image alone: an empty user turn that TRL fills with the image.
    return row(record.stem, record.image_path, record.chart_type, "table", [user("")], record.table)


def finetune_rows(record: ChartRecord, paraphrases: bool = False) -> Iterator[tuple[str, dict | BadRecord]]:
    """(task, row) for each task the chart gives, (task, BadRecord) for each it cannot."""
    completions = {"table": record.table, "description": record.description, "summary": record.summary}
    for task in FINETUNE_TASKS:
        text = completions[task]
        if not text:
            yield task, BadRecord(f"empty {task}")
            continue
        row_id = f"{record.stem}-{task}"
        prompt = [user(instruction_for(task, row_id, paraphrases))]
        yield task, row(row_id, record.image_path, record.chart_type, task, prompt, text)


@dataclass
class Conversation:
    """One GPT conversation and where it came from (`file:line` or `file[index]`)."""

    source: str
    data: object


def iter_conversations(path: str, shard_index: int = 0, num_shards: int = 1) -> Iterator[Conversation]:
    """
    The conversations of a JSON (array or object) or JSON Lines file; a line that is not UTF-8 or does not parse
    comes as a string saying why. With `num_shards`, only the lines (or array items) whose index is `shard_index`
    modulo `num_shards`.
    """
    if path.endswith(".jsonl"):
        # Bytes, decoded line by line: one line in another encoding is one bad record, not the end of the file.
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                if number % num_shards != shard_index:
                    continue
                source = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    yield Conversation(source, f"line is not UTF-8 (byte {error.start}: {error.reason})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield Conversation(source, json.loads(line))
                except json.JSONDecodeError as error:
                    yield Conversation(source, f"JSON does not parse: {error}")
        return
    try:
        with open(path, encoding="utf-8-sig") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        yield Conversation(path, f"JSON does not parse: {error}")
        return
    except UnicodeDecodeError as error:
        yield Conversation(path, f"file is not UTF-8 (byte {error.start}: {error.reason})")
        return
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        if index % num_shards == shard_index:
            yield Conversation(f"{path}[{index}]", item)


def conversation_id(data: dict) -> str | None:
    """The id a GPT conversation's rows take (`<id>-<turn>`): its `id`, else its image's stem; None without both."""
    if data.get("id"):
        return str(data["id"])
    filename = data.get("image")
    return os.path.splitext(filename)[0] if isinstance(filename, str) and filename else None


def repeated_conversations(paths) -> dict[str, str]:
    """
    `{source: reason}` for each GPT conversation whose id an earlier one already has, in the order of the files and
    of their lines: the first is kept, the later ones would give rows of the same ids and are bad records.
    """
    first, repeated = {}, {}
    for path in paths:
        for conversation in iter_conversations(path):
            key = conversation_id(conversation.data) if isinstance(conversation.data, dict) else None
            if key is None:
                continue
            if key in first:
                repeated[conversation.source] = f"conversation id {key!r} repeats; the first, {first[key]}, is kept"
            else:
                first[key] = conversation.source
    return repeated


def find_chart_image(root: str, split: str, filename: str) -> tuple[str, str] | None:
    """
    (path, chart_type) of an image file in one split's img_data/ tree, looking in each of the ten folders; a name in
    two of them is a `BadRecord` (`find_in_image_folders`).
    """
    return find_in_image_folders(os.path.join(root, split, "img_data"), filename)


def without_image_placeholder(text: str) -> str:
    """
    A question as the file writes it, without the `<image>` that marks the chart: LLaVA files put it at the start
    (`"<image>\\n..."`) or the end. One anywhere else is left in the text, where the consumer refuses it.
    """
    text = text.strip()
    if text.startswith(IMAGE_TOKEN):
        text = text[len(IMAGE_TOKEN) :]
    elif text.endswith(IMAGE_TOKEN):
        text = text[: -len(IMAGE_TOKEN)]
    return text.strip()


def conversation_turns(messages) -> list[tuple[str, str | None]]:
    """
    The one reading of LLaVA `conversations`, for training rows and for `chartwiz infer`'s question files: a list of
    `{"from": "human" | "gpt", "value": text}` messages where every `human` message is a question and the `gpt`
    message right after it, if there is one, its answer. Returns (question, answer or None) per question, the
    question without its `<image>` marker (`without_image_placeholder`) and an empty answer read as None. Raises
    `BadRecord` for a record that is not such a list: no messages, a message of another shape or speaker, or a `gpt`
    message that does not answer a question.

    A question without an answer (None: the conversation ends with it, or another question follows it) is read, not
    refused, and each use decides what it is: a training row needs its answer, so `qa_turns` makes that turn a
    `BadRecord` (the other turns of the conversation stay rows); a question file asks it, and a later turn that has
    it as context takes the model's own answer (`chartwiz.batch.questions.read_question_file`).
    """
    if not isinstance(messages, list) or not messages:
        raise BadRecord("'conversations' must be a non-empty list of {'from', 'value'} messages")
    turns: list[list] = []
    for index, message in enumerate(messages):
        speaker = message.get("from") if isinstance(message, dict) else None
        value = message.get("value") if isinstance(message, dict) else None
        if speaker not in ("human", "gpt") or not isinstance(value, (str, type(None))):
            raise BadRecord(f"conversations[{index}] is not a {{'from': 'human' or 'gpt', 'value': text}} message")
        if speaker == "human":
            turns.append([without_image_placeholder(value or ""), None])
        elif not turns or turns[-1][1] is not None:
            raise BadRecord(f"conversations[{index}] comes from 'gpt' but does not follow a question from 'human'")
        else:
            turns[-1][1] = (value or "").strip() or None
    return [tuple(turn) for turn in turns]


def qa_turns(conversation: dict) -> list[tuple[str, str] | BadRecord]:
    """
    (question, answer) per turn of a GPT conversation (read by `conversation_turns`), or a BadRecord for a turn that
    cannot be a training row: no answer, an empty question, or an `<image>` inside the question.
    """
    if "conversations" not in conversation:
        raise BadRecord("missing field 'conversations'")
    turns = []
    for number, (question, answer) in enumerate(conversation_turns(conversation["conversations"]), start=1):
        if answer is None:
            turns.append(BadRecord(f"turn {number} has a question but no answer"))
        elif not question:
            turns.append(BadRecord(f"turn {number} has an empty question"))
        elif IMAGE_TOKEN in question:
            turns.append(BadRecord(f"turn {number} has {IMAGE_TOKEN} inside its question, not at its start or end"))
        else:
            turns.append((question, answer))
    return turns


def qa_rows(conversation_id: str, image_path: str, chart_type: str, turns) -> Iterator[tuple[int, dict | BadRecord]]:
    """(turn number, row or BadRecord); a turn's prompt holds the earlier turns as context."""
    context = []
    for number, turn in enumerate(turns, start=1):
        if isinstance(turn, BadRecord):
            yield number, turn
            continue
        question, answer = turn
        prompt = [*context, user(question)]
        yield number, row(f"{conversation_id}-{number}", image_path, chart_type, "qa", prompt, answer)
        context = [*prompt, assistant(answer)]


__all__ = [
    "FINETUNE_TASKS",
    "INSTRUCTIONS",
    "Conversation",
    "check_image",
    "conversation_id",
    "conversation_turns",
    "find_chart_image",
    "finetune_rows",
    "instruction_for",
    "iter_conversations",
    "pretrain_row",
    "qa_rows",
    "qa_turns",
    "repeated_conversations",
    "without_image_placeholder",
]
