"""A model's table answer (`TITLE | ...` lines, docs/aihub-format.md) as a table to show and a CSV to download."""

import re
from dataclasses import dataclass
from typing import Optional

from chartwiz.evaluation.metrics import split_table


@dataclass
class ChartTable:
    """
    A table read from the table text.

    Args:
        title (`str`): the `TITLE | ...` line's title, empty without one.
        columns (`list[str]`): column names, the first one naming the row labels.
        rows (`list[list[str]]`): the cells, each row as long as `columns`.
    """

    title: str
    columns: list
    rows: list

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def to_csv(self) -> bytes:
        """The table as CSV in UTF-8 with a byte-order mark, which spreadsheet programs need to read Korean."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([_defuse(cell) for cell in self.columns])
        writer.writerows([_defuse(cell) for cell in row] for row in self.rows)
        return buffer.getvalue().encode("utf-8-sig")


_NUMBER = re.compile(r"^[-+]?\d")


def _defuse(cell: str) -> str:
    # Model output goes to spreadsheets: a cell that starts like a formula is quoted so that it stays text
    # (a negative number such as -5% is still written as it is).
    if cell[:1] in ("=", "@", "\t", "\r") or (cell[:1] in ("+", "-") and not _NUMBER.match(cell)):
        return "'" + cell
    return cell


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def parse_table(text: str) -> Optional[ChartTable]:
    """
    The table of a table answer, or `None` when the text is not one (fewer than two `|`-separated lines).

    The format: `TITLE | <title>` first; a header line `| c1 | c2 | ...` where the chart has a legend; then one line
    per row, `<label> | <v1> | <v2> | ...`. Lines without a `|` (prose around the table) are left out; the others are
    split as the metrics split them (`split_table`), case kept. A model's output may be ragged: short rows are padded
    with empty cells.
    """
    title, rows = split_table("\n".join(line for line in (text or "").splitlines() if "|" in line))
    # Only the contract's header line (an empty corner cell) is a header here. The metric follows DePlot, which also
    # takes the first line of a table wider than two columns as its header; a page that did so would turn a data
    # row the model wrote into column names, so one parser cannot serve both past this point.
    header = rows.pop(0)[1:] if rows and not rows[0][0] else None
    if len(rows) + (header is not None) + bool(title) < 2 or not rows:
        return None
    width = max([len(row) for row in rows] + [len(header) + 1 if header else 0])
    if header is not None:
        columns = ["항목", *header] + [f"값 {index}" for index in range(len(header) + 1, width)]
    else:
        columns = ["항목", "값"] if width == 2 else ["항목", *(f"값 {index}" for index in range(1, width))]
    rows = [row + [""] * (width - len(row)) for row in rows]
    return ChartTable(title or "", _unique([name or "항목" for name in columns]), rows)


__all__ = ["ChartTable", "parse_table"]
