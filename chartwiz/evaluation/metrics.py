"""Chart metrics: DePlot's table RMS, ChartQA's relaxed accuracy read from Korean answers, ROUGE-L and BLEU."""

import functools
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Optional

import numpy as np

from chartwiz.errors import ChartWizValueError
from chartwiz.extras import require
from chartwiz.names import normalize_text


TEXT_THRESHOLD = 0.5  # ANLS: a normalized edit distance at or above this scores 0 (pix2struct's anls_metric)
NUMBER_THRESHOLD = 0.1  # RMS: a relative error at or above this scores 0 (DePlot)
RELAXED_TOLERANCE = 0.05  # relaxed accuracy: a relative error up to this is still correct (ChartQA)
DEFAULT_BLEU_TOKENIZE = "intl"

TASK_METRICS = {
    "table": ("rms_precision", "rms_recall", "rms_f1", "rms_units_f1"),
    "description": ("rouge_l", "bleu"),
    "summary": ("rouge_l", "bleu"),
    "qa": ("relaxed_accuracy", "exact_match"),
}
TASKS = tuple(TASK_METRICS)


# ----------------------------------------------------------------------------------------------------------------
# Strings and numbers


def anls(target: str, prediction: str, threshold: float = TEXT_THRESHOLD) -> float:
    """
    Average normalized Levenshtein similarity of one pair, as pix2struct's `anls_metric` (which DePlot's RMS uses):
    `1 - distance / max(len)`, or 0 once the normalized distance reaches `threshold`, so two keys one edit apart in
    two characters (`판매`, `판촉`) score 0. Two empty strings are identical (1.0), where pix2struct divides by zero.
    """
    distance = _levenshtein().normalized_distance(target, prediction)
    return 1.0 - distance if distance < threshold else 0.0


# The scoring libraries are the `[eval]` extra: parsing tables (the demo does) needs none of them.
@functools.cache
def _levenshtein():
    return require("rapidfuzz.distance", "ANLS").Levenshtein


def relative_distance(target: float, prediction: float, threshold: float = 1.0) -> float:
    """`min(1, |target - prediction| / |target|)`, and 1 once it reaches `threshold`; `target` must not be 0."""
    distance = min(abs((target - prediction) / target), 1.0)
    return distance if distance < threshold else 1.0


# A plain decimal as Python's float() reads it, without the nan / inf / 1_000 forms float() also accepts.
_PLAIN_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
# A number as our tables and answers write it: optional sign, optional thousands separators, optional decimals.
_NUMBER = r"[+\-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+\-\u2212]?\.\d+"
_QUANTITY_CELL = re.compile(rf"\s*({_NUMBER})\s*(\D*?)\s*")


def _to_number(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


def deplot_float(text: str) -> Optional[float]:
    """A cell as DePlot reads it: a plain number, or a percentage as a fraction (`30%` -> 0.3); else None."""
    core = text.rstrip("%")
    if not _PLAIN_FLOAT.fullmatch(core):
        return None
    return float(core) / 100.0 if text.endswith("%") else float(core)


@dataclass(frozen=True)
class Quantity:
    """A number and the unit written after it (`950만 명` -> 950.0, `만명`)."""

    value: float
    unit: str

    @property
    def comparable(self) -> float:
        """The value with a percentage read as a fraction, as ChartQA compares numbers."""
        return self.value / 100.0 if self.unit == "%" else self.value


def parse_quantity(cell: str) -> Optional[Quantity]:
    """
    A table cell read as a number followed by a unit: the unit is everything after the number, with no digit in
    it, spaces removed and compared literally (`950만 명` -> 950, `만명`; `30%` -> 30, `%`; `12` -> 12, ``).
    Magnitude words such as 만 / 억 / 천 belong to the unit. None for anything else (`2021년 3월`, `약 30`, `-`).
    """
    match = _QUANTITY_CELL.fullmatch(cell)
    if match is None:
        return None
    return Quantity(_to_number(match.group(1)), re.sub(r"\s+", "", match.group(2)))


# ----------------------------------------------------------------------------------------------------------------
# Tables: DePlot's relative mapping similarity (RMS)


@dataclass(frozen=True)
class Table:
    """A parsed table text: the title, the column-header row and the data rows (all lowercased, cells stripped)."""

    title: Optional[str] = None
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()


def split_table(text: str) -> tuple[Optional[str], list[list[str]]]:
    """
    The title and the cells of a table text in the ChartWiz layout (docs/aihub-format.md): a first line
    `TITLE | <title>` (in any case) gives the title, `None` without one; every other non-blank line is split on `|`
    into stripped cells, so the contract's header line `| 2021 | 2022` starts with an empty corner cell.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    title = None
    if lines:
        first, bar, rest = lines[0].partition("|")
        if bar and first.strip().lower() == "title":
            title, lines = rest.strip(), lines[1:]
    return title, [[cell.strip() for cell in line.split("|")] for line in lines]


def parse_table(text: str, transposed: bool = False) -> Table:
    """
    Reads a table text in the ChartWiz layout (docs/aihub-format.md), lowercased as DePlot does.

    Cells are split on `|` and stripped, so the contract's header line `| 2021 | 2022` gives an empty corner cell
    (DePlot splits on `" | "`, which would glue `| 2021` into one cell). A first line `TITLE | ...` is the title.
    The first line after it is the column-header row when its first cell is empty (the contract's header line) or
    when the table has more than two columns (DePlot's own `characteristic | c1 | c2` layout); a two-column table
    whose first line starts with a name is the contract's one-series layout (`category | value`), which has no
    header line: its column header is empty. Blank lines are ignored. With `transposed`, rows and columns swap
    (ragged rows padded with empty cells) after the header is placed.

    Args:
        text (`str`): the table text.
        transposed (`bool`, *optional*, defaults to `False`): read the table with rows and columns swapped.
    """
    title, rows = split_table(text.lower())
    if not rows:
        return Table(title=title)
    width = max(len(row) for row in rows)
    if rows[0][0] and width <= 2:
        rows = [[""] * width, *rows]
    if transposed:
        rows = [list(column) for column in zip_longest(*rows, fillvalue="")]
    return Table(title=title, header=tuple(rows[0]), rows=tuple(tuple(row) for row in rows[1:]))


def table_datapoints(table: Table) -> dict[str, str]:
    """
    `{key: cell}` of a table, DePlot's datapoints: `title` for the title, and `<row name> <column name>` for every
    data cell (an empty name leaves the other one alone as the key). A repeated key keeps its last cell.
    """
    datapoints = {}
    if table.title is not None:
        datapoints["title"] = table.title
    if not table.rows or len(table.header) <= 1:
        return datapoints
    for row in table.rows:
        for column, cell in zip(table.header[1:], row[1:]):
            datapoints[f"{row[0]} {column}".strip()] = cell
    return datapoints


@dataclass(frozen=True)
class TableScore:
    """Precision, recall and (true) F1 of one predicted table, each in [0, 1]."""

    precision: float
    recall: float
    f1: float


def _cell_similarity(target: str, prediction: str, units: bool) -> float:
    if units:
        target_quantity, predicted_quantity = parse_quantity(target), parse_quantity(prediction)
        if (
            target_quantity is not None
            and predicted_quantity is not None
            and target_quantity.unit == predicted_quantity.unit
            and target_quantity.value != 0
        ):
            return 1.0 - relative_distance(target_quantity.value, predicted_quantity.value, NUMBER_THRESHOLD)
    # DePlot's rule: numbers (and percentages) by relative distance, identical cells 1, other text by ANLS.
    target_number, predicted_number = deplot_float(target), deplot_float(prediction)
    if predicted_number is not None and target_number:
        return 1.0 - relative_distance(target_number, predicted_number, NUMBER_THRESHOLD)
    if target == prediction:
        return 1.0
    return anls(target, prediction, TEXT_THRESHOLD)


def datapoints_score(target: dict[str, str], prediction: dict[str, str], units: bool = False) -> TableScore:
    """
    RMS of two sets of datapoints: keys are paired by minimum-cost assignment on `1 - ANLS(key)`; a pair scores
    `ANLS(key) x cell similarity`; precision and recall divide the summed score by the predicted and target counts.
    A prediction without datapoints scores 0 against a target that has some (DePlot gives it precision 1).

    Args:
        target (`dict[str, str]`): the reference datapoints.
        prediction (`dict[str, str]`): the predicted datapoints.
        units (`bool`, *optional*, defaults to `False`): compare `number + unit` cells carrying the same unit as
            numbers (`rms_units_f1`); DePlot only reads plain numbers and percentages.
    """
    return _datapoints_scores(target, prediction)[units]


def _datapoints_scores(target: dict[str, str], prediction: dict[str, str]) -> tuple[TableScore, TableScore]:
    # Both variants: the key assignment does not depend on the cells, so it is computed once.
    if not target and not prediction:
        return TableScore(1.0, 1.0, 1.0), TableScore(1.0, 1.0, 1.0)
    if not target:
        return TableScore(0.0, 1.0, 0.0), TableScore(0.0, 1.0, 0.0)
    if not prediction:
        return TableScore(0.0, 0.0, 0.0), TableScore(0.0, 0.0, 0.0)
    target_items, predicted_items = list(target.items()), list(prediction.items())
    cdist = require("rapidfuzz.process", "The table metric").cdist
    linear_sum_assignment = require("scipy.optimize", "The table metric").linear_sum_assignment
    distance = cdist(
        [key for key, _ in target_items],
        [key for key, _ in predicted_items],
        scorer=_levenshtein().normalized_distance,
        dtype=np.float64,
    )  # [target keys, predicted keys]
    key_similarity = np.where(distance < TEXT_THRESHOLD, 1.0 - distance, 0.0)
    target_index, predicted_index = linear_sum_assignment(1.0 - key_similarity)
    plain = units = 0.0
    for t, p in zip(target_index, predicted_index):
        if key_similarity[t, p] > 0:
            target_cell, predicted_cell = target_items[t][1], predicted_items[p][1]
            plain += float(key_similarity[t, p]) * _cell_similarity(target_cell, predicted_cell, units=False)
            units += float(key_similarity[t, p]) * _cell_similarity(target_cell, predicted_cell, units=True)
    return (
        _precision_recall_f1(plain, len(target_items), len(predicted_items)),
        _precision_recall_f1(units, len(target_items), len(predicted_items)),
    )


def _precision_recall_f1(score: float, target_count: int, predicted_count: int) -> TableScore:
    if score == 0:
        return TableScore(0.0, 0.0, 0.0)
    precision, recall = score / predicted_count, score / target_count
    return TableScore(precision, recall, 2 * precision * recall / (precision + recall))


def table_scores(target: str, prediction: str) -> tuple[TableScore, TableScore]:
    """
    RMS of one predicted table text against its reference, as DePlot defines it and with units (`table_score`'s
    two variants, sharing the parsing and the key matching).
    """
    target_points = table_datapoints(parse_table(target))
    best_plain = best_units = None
    for transposed in (True, False):
        plain, units = _datapoints_scores(target_points, table_datapoints(parse_table(prediction, transposed)))
        best_plain = plain if best_plain is None or plain.f1 > best_plain.f1 else best_plain
        best_units = units if best_units is None or units.f1 > best_units.f1 else best_units
    return best_plain, best_units


def table_score(target: str, prediction: str, units: bool = False) -> TableScore:
    """
    RMS of one predicted table text against its reference: the prediction is read transposed and as written, and the
    reading with the higher F1 is kept (the transposed one on a tie, as DePlot's order has it).

    Args:
        target (`str`): the reference table text.
        prediction (`str`): the predicted table text.
        units (`bool`, *optional*, defaults to `False`): the units variant (`rms_units_f1`), see `datapoints_score`.
    """
    return table_scores(target, prediction)[units]


def rms(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """
    `rms_precision`, `rms_recall`, `rms_f1` and `rms_units_f1`, means over the examples in percent. The F1 is the
    mean of each example's true F1 (DePlot's reference implementation averages the recall under that name).
    """
    _check_lengths(references, predictions)
    scores = [table_scores(reference, prediction) for reference, prediction in zip(references, predictions)]
    return {
        "rms_precision": _mean_percent([plain.precision for plain, _ in scores]),
        "rms_recall": _mean_percent([plain.recall for plain, _ in scores]),
        "rms_f1": _mean_percent([plain.f1 for plain, _ in scores]),
        "rms_units_f1": _mean_percent([units.f1 for _, units in scores]),
    }


# ----------------------------------------------------------------------------------------------------------------
# Question answering: ChartQA's relaxed accuracy on the answer read from a Korean sentence


# Korean particles and copula endings that glue onto a unit (`명으로`, `%입니다`), longest first.
_PARTICLES = sorted(
    (
        "입니다 이었습니다 였습니다 이었으며 였으며 이었고 였고 이었다 였다 이며 이고 이다 이나 이라 라 "
        "으로서 으로써 으로 로서 로써 로 에서 에게 에는 까지 부터 보다 만큼 씩 "
        "이 가 은 는 을 를 의 에 와 과 도 나"
    ).split(),
    key=len,
    reverse=True,
)
# `이(가)`, `(으)로`: both particle forms written out, as generated answers often do.
_ALTERNATIVE_PARTICLE = re.compile(r"\([가-힣]{1,2}\)")
_MAGNITUDE = re.compile(r"[십백천만억조]+")
_SENTENCE_NUMBER = re.compile(rf"(?<![\d.,A-Za-z])(?:{_NUMBER})")
_GLUED_WORD = re.compile(r"[^\s\d]*")
_NEXT_WORD = re.compile(r"\s+([^\s\d]+)")


def _strip_particles(word: str) -> str:
    word = _ALTERNATIVE_PARTICLE.sub("", word)
    while True:
        word = _trim_punctuation(word)
        for particle in _PARTICLES:
            if word.endswith(particle):
                word = word[: -len(particle)]
                break
        else:
            return word


def _trim_punctuation(word: str) -> str:
    # Sentence punctuation around a unit goes (`명.`, `%),`); `%` is punctuation to Unicode but is a unit here.
    while word and word[-1] != "%" and unicodedata.category(word[-1]).startswith("P"):
        word = word[:-1]
    return word


def find_quantities(text: str) -> list[Quantity]:
    """
    The numbers of a sentence, in order, each with its unit: the word glued to the number, or the next word when
    nothing is glued to it (`950 명`) or only a magnitude such as 만 or 억 is (`950만 명`), without the Korean
    particles and endings that follow it (`명으로` -> `명`, `%입니다` -> `%`) and without spaces. `1,000`-style numbers
    are read whole; a number glued to a preceding digit, point, comma or Latin letter (`A3`) is not one.
    """
    text = unicodedata.normalize("NFKC", text)
    quantities = []
    for match in _SENTENCE_NUMBER.finditer(text):
        word = _GLUED_WORD.match(text, match.end()).group()
        if not word or _MAGNITUDE.fullmatch(word):
            following = _NEXT_WORD.match(text, match.end() + len(word))
            if following is not None:
                word += following.group(1)
        quantities.append(Quantity(_to_number(match.group()), _strip_particles(word).lower()))
    return quantities


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
    _check_lengths(references, predictions)
    pairs = list(zip(references, predictions))
    return {
        "relaxed_accuracy": _mean_percent([relaxed_correct(reference, prediction) for reference, prediction in pairs]),
        "exact_match": _mean_percent([exact_match(reference, prediction) for reference, prediction in pairs]),
    }


# ----------------------------------------------------------------------------------------------------------------
# Descriptions and summaries: ROUGE-L and BLEU


_WORD = re.compile(r"\w+")


def korean_words(text: str) -> list[str]:
    """Lowercased runs of letters and digits of any script (Hangul included), punctuation dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


class KoreanWordTokenizer:
    """
    `rouge_score` tokenizer that keeps Hangul. Its default one lowercases and then replaces everything but `a-z0-9`
    with spaces, so a Korean text has no tokens left and scores 0. (`RougeScorer` only calls `tokenize`, so this
    need not subclass `rouge_score.tokenizers.Tokenizer`, and importing this module needs no `rouge_score`.)
    """

    def tokenize(self, text: str) -> list[str]:
        return korean_words(text)


@functools.cache
def _rouge_scorer():
    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE-L")
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=KoreanWordTokenizer())


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure in percent (`rouge_score`, on `korean_words` tokens: words as spaces and punctuation
    delimit them, so a particle is part of its word)."""
    _check_lengths(references, predictions)
    return _mean_percent(
        [
            _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure
            for reference, prediction in zip(references, predictions)
        ]
    )


def bleu(
    references: Sequence[str], predictions: Sequence[str], tokenize: str = DEFAULT_BLEU_TOKENIZE
) -> tuple[float, str]:
    """
    Corpus BLEU (sacrebleu, one reference each) and its signature. The default tokenizer, `intl`, splits Unicode
    punctuation and symbols off and keeps Hangul words whole; `ko-mecab` (morphemes, `pip install "sacrebleu[ko]"`)
    is the other Korean choice.
    """
    _check_lengths(references, predictions)
    metric = _bleu_metric(tokenize)
    score = metric.corpus_score(list(predictions), [list(references)])
    return score.score, str(metric.get_signature())


def bleu_signature(tokenize: str = DEFAULT_BLEU_TOKENIZE) -> str:
    """
    sacrebleu's signature of `bleu` with this tokenizer (one reference per prediction), for reports; raises
    `ValueError` for a tokenizer that sacrebleu does not have or that is not installed.
    """
    metric = _bleu_metric(tokenize)
    metric.corpus_score(["-"], [["-"]])  # sacrebleu completes the signature (the reference count) once it has scored
    return str(metric.get_signature())


def _bleu_metric(tokenize: str):
    BLEU = require("sacrebleu.metrics", "BLEU").BLEU
    if tokenize not in BLEU.TOKENIZERS:
        raise ChartWizValueError(f"Unknown BLEU tokenizer {tokenize!r}; sacrebleu has {', '.join(BLEU.TOKENIZERS)}.")
    try:
        return BLEU(tokenize=tokenize)
    except RuntimeError as error:  # sacrebleu's word for a tokenizer whose extra packages are missing
        raise ChartWizValueError(
            f"The BLEU tokenizer {tokenize!r} is not installed: {' '.join(str(error).split())}"
        ) from None


# ----------------------------------------------------------------------------------------------------------------


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


def _mean_percent(values: Sequence[float]) -> float:
    return 100.0 * math.fsum(values) / len(values) if values else 0.0


def _check_lengths(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")


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
