"""
Chart metrics: DePlot's table RMS, ChartQA's relaxed accuracy read from Korean answers, ROUGE-L and BLEU.

This is the public module: it maps each task to its metrics (`TASK_METRICS`, `score_task`) and exports every metric,
which live by kind in `table_metrics`, `answer_metrics` and `text_metrics` (numbers with units in `quantities`).
"""

from collections.abc import Sequence

from chartwiz.names import normalize_text

from .answer_metrics import (
    RELAXED_TOLERANCE,
    exact_match,
    extract_answer,
    normalize_answer,
    relaxed_accuracy,
    relaxed_correct,
)
from .quantities import Quantity, find_quantities, parse_quantity
from .table_metrics import (
    NUMBER_THRESHOLD,
    TEXT_THRESHOLD,
    Table,
    TableScore,
    anls,
    datapoints_score,
    deplot_float,
    parse_table,
    relative_distance,
    rms,
    split_table,
    table_datapoints,
    table_score,
    table_scores,
)
from .text_metrics import DEFAULT_BLEU_TOKENIZE, KoreanWordTokenizer, bleu, bleu_signature, korean_words, rouge_l


TASK_METRICS = {
    "table": ("rms_precision", "rms_recall", "rms_f1", "rms_units_f1", "rms_cells_f1", "title_match"),
    "description": ("rouge_l", "bleu"),
    "summary": ("rouge_l", "bleu"),
    "qa": ("relaxed_accuracy", "exact_match"),
}
TASKS = tuple(TASK_METRICS)


def score_task(
    task: str, references: Sequence[str], predictions: Sequence[str], bleu_tokenize: str = DEFAULT_BLEU_TOKENIZE
) -> dict[str, float]:
    """
    The task's metrics (`TASK_METRICS`) of a group of examples, in percent, with `n`. Both texts are compared in the
    one Unicode form (NFC, `normalize_text`) that training rows and the model's prompts are in.

    Args:
        task (`str`): `table`, `description`, `summary` or `qa`.
        references (`Sequence[str]`): the reference texts.
        predictions (`Sequence[str]`): the predicted texts, in the same order.
        bleu_tokenize (`str`, *optional*, defaults to `"intl"`): sacrebleu tokenizer for `bleu`.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"Unknown task {task!r}; choose from {', '.join(TASKS)}.")
    # A reference written in decomposed jamo (NFD) and a prediction in syllables (NFC) are the same text.
    references, predictions = (
        [normalize_text(text) for text in references],
        [normalize_text(text) for text in predictions],
    )
    if task == "table":
        scores = rms(references, predictions)
    elif task == "qa":
        scores = relaxed_accuracy(references, predictions)
    else:
        scores = {"rouge_l": rouge_l(references, predictions), "bleu": bleu(references, predictions, bleu_tokenize)[0]}
    return {**scores, "n": len(references)}


__all__ = [
    "DEFAULT_BLEU_TOKENIZE",
    "NUMBER_THRESHOLD",
    "RELAXED_TOLERANCE",
    "TASKS",
    "TASK_METRICS",
    "TEXT_THRESHOLD",
    "KoreanWordTokenizer",
    "Quantity",
    "Table",
    "TableScore",
    "anls",
    "bleu",
    "bleu_signature",
    "datapoints_score",
    "deplot_float",
    "exact_match",
    "extract_answer",
    "find_quantities",
    "korean_words",
    "normalize_answer",
    "parse_quantity",
    "parse_table",
    "relative_distance",
    "relaxed_accuracy",
    "relaxed_correct",
    "rms",
    "rouge_l",
    "score_task",
    "split_table",
    "table_datapoints",
    "table_score",
    "table_scores",
]
