"""Question answering: ChartQA's relaxed accuracy on the answer read from a Korean sentence, and exact match."""

import unicodedata
from collections.abc import Sequence
from typing import Optional

from .corpus import check_lengths, mean_percent
from .quantities import Quantity, find_quantities


RELAXED_TOLERANCE = 0.05  # relaxed accuracy: a relative error up to this is still correct (ChartQA)


def normalize_answer(text: str) -> str:
    """NFKC, lowercased, runs of whitespace as one space, without surrounding spaces and final punctuation."""
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return text.rstrip(".!?。 ")


def extract_answer(prediction: str, reference: str) -> Optional[Quantity | str]:
    """
    The answer that relaxed accuracy compares. When the reference holds a number, its answer is its last number (Korean
    puts the value just before the predicate: `2021년이 950만 명으로 가장 많습니다`), and the prediction's is its last
    number carrying that unit, else its last number (None when it has none). Otherwise both answers are the
    normalized whole text.
    """
    target = find_quantities(reference)
    if not target:
        return normalize_answer(prediction)
    candidates = find_quantities(prediction)
    same_unit = [quantity for quantity in candidates if quantity.unit == target[-1].unit]
    return (same_unit or candidates or [None])[-1]


def relaxed_correct(reference: str, prediction: str, tolerance: float = RELAXED_TOLERANCE) -> bool:
    """
    ChartQA's relaxed correctness of a Korean answer: numbers (a percentage read as a fraction) are correct within
    `tolerance` relative error, a zero reference needs a zero; an answer without a number needs an exact match of the
    normalized text (see `extract_answer`).
    """
    target_numbers = find_quantities(reference)
    answer = extract_answer(prediction, reference)
    if not target_numbers:
        return answer == normalize_answer(reference)
    if answer is None:
        return False
    target, predicted = target_numbers[-1].comparable, answer.comparable
    if target == 0:
        return predicted == 0
    return abs(predicted - target) / abs(target) <= tolerance


def exact_match(reference: str, prediction: str) -> bool:
    """Whether the normalized whole texts are equal."""
    return normalize_answer(reference) == normalize_answer(prediction)


def relaxed_accuracy(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """`relaxed_accuracy` and `exact_match` in percent."""
    check_lengths(references, predictions)
    pairs = list(zip(references, predictions))
    return {
        "relaxed_accuracy": mean_percent([relaxed_correct(reference, prediction) for reference, prediction in pairs]),
        "exact_match": mean_percent([exact_match(reference, prediction) for reference, prediction in pairs]),
    }


__all__ = [
    "RELAXED_TOLERANCE",
    "exact_match",
    "extract_answer",
    "normalize_answer",
    "relaxed_accuracy",
    "relaxed_correct",
]
