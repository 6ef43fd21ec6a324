"""
Answering a built split for evaluation: its questions, the blank and shuffled charts of the image ablations, and the
predictions file that `chartwiz infer`'s engine's answers make (`scoring` reads it).
"""

import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Optional

from PIL import Image

from chartwiz.batch.questions import DatasetImages, Question, load_split, read_dataset_questions
from chartwiz.batch.run import InferenceSummary, run_inference
from chartwiz.batch.run_store import read_jsonl
from chartwiz.errors import ChartWizValueError
from chartwiz.files import write_text_atomic
from chartwiz.fingerprints import ContentDigests
from chartwiz.names import DEFAULT_BATCH_SIZE, INSTRUCTIONS

from .instructions import apply_instructions
from .metrics import TASK_METRICS, TASKS
from .report import PREDICTIONS_FILE


# `chartwiz infer`'s answers; beside it its errors file (the rows that could not be asked) and its settings file.
ANSWERS_FILE = "answers.jsonl"
PREDICTION_FIELDS = ("id", "task", "chart_type", "prediction", "reference")


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


def load_split_rows(dataset_path: str, config: str, split: str, max_samples: Optional[int] = None):
    """A split of a built dataset (`load_split`), or its first `max_samples` rows."""
    dataset = load_split(dataset_path, config, split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


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


__all__ = [
    "ANSWERS_FILE",
    "PREDICTION_FIELDS",
    "Prediction",
    "blank_charts",
    "chart_identities",
    "check_one_ablation",
    "load_split_rows",
    "predict_dataset",
    "shuffled_charts",
    "split_questions",
]
