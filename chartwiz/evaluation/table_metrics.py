"""Tables: DePlot's relative mapping similarity (RMS) of a predicted table against its reference."""

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Optional

import numpy as np

from chartwiz.extras import require

from .corpus import check_lengths, mean_percent
from .quantities import parse_quantity


TEXT_THRESHOLD = 0.5  # ANLS: a normalized edit distance at or above this scores 0 (pix2struct's anls_metric)
NUMBER_THRESHOLD = 0.1  # RMS: a relative error at or above this scores 0 (DePlot)


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


def deplot_float(text: str) -> Optional[float]:
    """A cell as DePlot reads it: a plain number, or a percentage as a fraction (`30%` -> 0.3); else None."""
    core = text.rstrip("%")
    if not _PLAIN_FLOAT.fullmatch(core):
        return None
    return float(core) / 100.0 if text.endswith("%") else float(core)


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


def _best_reading(target_points: dict[str, str], readings: list[dict[str, str]]) -> tuple[TableScore, TableScore]:
    # The reading with the higher F1 is kept, the first (transposed) on a tie, as DePlot's order has it.
    best_plain = best_units = None
    for predicted_points in readings:
        plain, units = _datapoints_scores(target_points, predicted_points)
        best_plain = plain if best_plain is None or plain.f1 > best_plain.f1 else best_plain
        best_units = units if best_units is None or units.f1 > best_units.f1 else best_units
    return best_plain, best_units


def _without_title(points: dict[str, str]) -> dict[str, str]:
    return {key: cell for key, cell in points.items() if key != "title"}


def _pair_scores(target: str, prediction: str) -> tuple[TableScore, TableScore, TableScore, bool]:
    """RMS, RMS with units, RMS of the cells alone and whether the titles match, each table parsed once."""
    target_table = parse_table(target)
    target_points = table_datapoints(target_table)
    tables = [parse_table(prediction, transposed) for transposed in (True, False)]
    readings = [table_datapoints(table) for table in tables]
    plain, units = _best_reading(target_points, readings)
    cells, _ = _best_reading(_without_title(target_points), [_without_title(points) for points in readings])
    return plain, units, cells, target_table.title == tables[0].title


def table_scores(target: str, prediction: str) -> tuple[TableScore, TableScore]:
    """
    RMS of one predicted table text against its reference, as DePlot defines it and with units (`table_score`'s
    two variants, sharing the parsing and the key matching).
    """
    target_points = table_datapoints(parse_table(target))
    return _best_reading(target_points, [table_datapoints(parse_table(prediction, t)) for t in (True, False)])


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

    DePlot counts the title as one datapoint beside the cells, and a short table's title weighs a lot: a prediction
    that is the right title line alone scores an F1 of 2 / (1 + datapoints). So `rms_cells_f1` is the F1 with both
    titles left out (the data cells only) and `title_match` the share of tables whose title is the reference's: a
    reader of titles that writes no value shows as a high `title_match` and a `rms_cells_f1` near 0.
    """
    check_lengths(references, predictions)
    scores = [_pair_scores(reference, prediction) for reference, prediction in zip(references, predictions)]
    return {
        "rms_precision": mean_percent([plain.precision for plain, *_ in scores]),
        "rms_recall": mean_percent([plain.recall for plain, *_ in scores]),
        "rms_f1": mean_percent([plain.f1 for plain, *_ in scores]),
        "rms_units_f1": mean_percent([units.f1 for _, units, *_ in scores]),
        "rms_cells_f1": mean_percent([cells.f1 for _, _, cells, _ in scores]),
        "title_match": mean_percent([title_match for *_, title_match in scores]),
    }


__all__ = [
    "NUMBER_THRESHOLD",
    "TEXT_THRESHOLD",
    "Table",
    "TableScore",
    "anls",
    "datapoints_score",
    "deplot_float",
    "parse_table",
    "relative_distance",
    "rms",
    "split_table",
    "table_datapoints",
    "table_score",
    "table_scores",
]
