"""
The data of a synthetic chart, drawn from one seeded generator. Every draw's place in the sequence is part of the
output: the same seed must keep giving the same charts, so draws are neither added, dropped nor reordered.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from .text import description, expected_table, facts_of, qa_record, summary


METADATA = {
    "vertical_bar": ("세로 막대형", "표준형"),
    "vertical_bar_stacked": ("세로 막대형", "누적형"),
    "vertical_bar_100": ("세로 막대형", "100% 기준 누적형"),
    "horizontal_bar": ("가로 막대형", "표준형"),
    "horizontal_bar_stacked": ("가로 막대형", "누적형"),
    "horizontal_bar_100": ("가로 막대형", "100% 기준 누적형"),
    "line": ("꺾은선형", "표준형"),
    "pie": ("원형", "표준형"),
    "radial": ("기타", "방사형"),
    "mix": ("기타", "혼합형"),
}
CATEGORY_POOLS = {
    "지역": ["서울", "부산", "대구", "인천", "광주", "대전", "울산", "세종", "경기", "강원", "제주"],
    "연도": [f"{year}년" for year in range(2015, 2025)],
    "월": [f"{month}월" for month in range(1, 13)],
    "연령대": ["10대", "20대", "30대", "40대", "50대", "60대 이상"],
    "업종": ["제조업", "건설업", "도소매업", "숙박음식업", "정보통신업", "금융업", "교육서비스업"],
    "품목": ["쌀", "보리", "콩", "감자", "고구마", "배추", "사과"],
}
LEGEND_POOL = [
    "남성",
    "여성",
    "A사",
    "B사",
    "C사",
    "수출",
    "수입",
    "온라인",
    "오프라인",
    "도시",
    "농촌",
    "전년",
    "올해",
]
SUBJECTS = ["인구", "매출액", "생산량", "이용자 수", "판매량", "방문객 수", "응답 비율", "투자액", "점유율", "고용률"]
UNITS = ["%", "만 명", "억 원", "천 톤", "개", "건", "명", "천 대", ""]
CHART_SIZE = (640, 480)  # width, height: small, with large text (see render_chart)


@dataclass
class SynthChart:
    """One synthetic chart: its data in the contract's schema plus the table the contract says it linearizes to."""

    stem: str
    split: str
    chart_type: str
    annotation: dict
    expected_table: str
    qa: dict


@dataclass(frozen=True)
class ChartKind:
    """How one chart type draws its series names and blocks, after the draws every type shares (`make_chart`)."""

    legends: Callable[[random.Random, list[str]], list[str]]
    blocks: Callable[[random.Random, "_Draft"], list[dict]]
    percent: bool = False  # the unit is always %
    shares: bool = False  # whole shares of 100 per category, never decimals
    # Stacked segments print their value inside and radar points near the centre crowd together: neither may be too
    # small for its printed value.
    low: int = 5
    horizontal: bool = False


@dataclass
class _Draft:
    """What `make_chart` drew before the type's own blocks."""

    kind: ChartKind
    title: str
    unit: str
    floats: bool
    categories: list[str]
    legends: list[str]


def _number(rng: random.Random, low: float, high: float, floats: bool):
    if floats:
        return round(rng.uniform(low, high), 1)
    return rng.randint(int(low), int(high))


def _as_typed(rng: random.Random, value):
    # Annotators sometimes typed numbers as strings; the table keeps such a string as it is.
    return str(value) if rng.random() < 0.1 else value


def _hundred_percent_rows(rng: random.Random, legends: int, categories: int) -> list[list]:
    columns = []
    for _ in range(categories):
        # Shares of at least 8%: a thinner segment has no room for its printed value.
        cuts = sorted(rng.sample(range(1, 100 - 7 * legends), legends - 1))
        cuts = [cut + 7 * number for number, cut in enumerate(cuts, start=1)]
        columns.append([b - a for a, b in zip([0, *cuts], [*cuts, 100])])
    return [[columns[column][row] for column in range(categories)] for row in range(legends)]


# At most two series: a third one's printed values have no room at the sizes a tiny encoder reads.
def _none_or_two_legends(rng: random.Random, categories: list[str]) -> list[str]:
    return rng.sample(LEGEND_POOL, 0 if rng.random() < 0.6 else 2)


def _one_or_two_legends(rng: random.Random, categories: list[str]) -> list[str]:
    return rng.sample(LEGEND_POOL, rng.randint(1, 2))


def _two_legends(rng: random.Random, categories: list[str]) -> list[str]:
    return rng.sample(LEGEND_POOL, 2)


def _category_legends(rng: random.Random, categories: list[str]) -> list[str]:
    # Pie slices are named by the legend, with no axis labels.
    return list(categories)


def _pie_blocks(rng: random.Random, draft: _Draft) -> list[dict]:
    shares = _hundred_percent_rows(rng, len(draft.legends), 1)
    values = [row[0] for row in shares]
    data_label = [values] if rng.random() < 0.5 else [[value] for value in values]
    axes = {"x_axis": [], "y_axis": []}
    return [
        {
            "title": draft.title,
            "unit": draft.unit,
            "legend": draft.legends,
            "axis_label": axes,
            "data_label": data_label,
        }
    ]


def _mix_blocks(rng: random.Random, draft: _Draft) -> list[dict]:
    # A bar and a line of their own names: the two legends drawn before go unused, yet stay drawn for the seed's sake.
    bar_legend, line_legend = rng.sample(LEGEND_POOL, 2)
    line_unit = rng.choice(["%", "명", "개"])
    bar_values = [_number(rng, 10, 500, draft.floats) for _ in draft.categories]
    line_values = [_number(rng, 1, 100, True) for _ in draft.categories]
    axes = {"x_axis": list(draft.categories), "y_axis": []}
    return [
        {
            "title": draft.title,
            "unit": draft.unit,
            "legend": [bar_legend],
            "axis_label": axes,
            "data_label": [bar_values],
        },
        {
            "title": f"{bar_legend} 대비 {line_legend}",
            "unit": line_unit,
            "legend": [line_legend],
            "axis_label": {"x_axis": list(draft.categories), "y_axis": []},
            "data_label": [line_values],
        },
    ]


def _share_blocks(rng: random.Random, draft: _Draft) -> list[dict]:
    # Two series at least: a single one would fill every bar to 100%.
    rows_needed = max(2, len(draft.legends))
    legends = draft.legends or rng.sample(LEGEND_POOL, rows_needed)
    return _table_block(rng, draft, legends, _hundred_percent_rows(rng, rows_needed, len(draft.categories)))


def _value_blocks(rng: random.Random, draft: _Draft) -> list[dict]:
    rows = [
        [_number(rng, draft.kind.low, 900, draft.floats) for _ in draft.categories]
        for _ in range(max(1, len(draft.legends)))
    ]
    return _table_block(rng, draft, draft.legends, rows)


def _table_block(rng: random.Random, draft: _Draft, legends: list[str], rows: list[list]) -> list[dict]:
    """The one block of a bar, line or radar chart: a row of values per series, over the categories."""
    rows = [[_as_typed(rng, value) for value in row] for row in rows]
    categories = list(draft.categories)
    axes = {"x_axis": [], "y_axis": categories} if draft.kind.horizontal else {"x_axis": categories, "y_axis": []}
    data_label = rows if legends or rng.random() < 0.5 else rows[0]
    return [
        {"title": draft.title, "unit": draft.unit, "legend": legends, "axis_label": axes, "data_label": data_label}
    ]


CHART_KINDS = {
    "vertical_bar": ChartKind(_none_or_two_legends, _value_blocks),
    "vertical_bar_stacked": ChartKind(_two_legends, _value_blocks, low=100),
    "vertical_bar_100": ChartKind(_two_legends, _share_blocks, percent=True, shares=True),
    "horizontal_bar": ChartKind(_none_or_two_legends, _value_blocks, horizontal=True),
    "horizontal_bar_stacked": ChartKind(_two_legends, _value_blocks, low=100, horizontal=True),
    "horizontal_bar_100": ChartKind(_two_legends, _share_blocks, percent=True, shares=True, horizontal=True),
    "line": ChartKind(_one_or_two_legends, _value_blocks),
    "pie": ChartKind(_category_legends, _pie_blocks, percent=True),
    "radial": ChartKind(_one_or_two_legends, _value_blocks, low=200),
    "mix": ChartKind(_two_legends, _mix_blocks),
}


def chart_split(index: int, test_fraction: float, n: Optional[int] = None) -> str:
    """
    The split of the `index`-th chart of a set of `n`. Charts come in rounds of ten, one of each type, and every
    `1 / test_fraction`-th round from the first goes to test, so that the test split holds every type. A set of one
    round or less would then have no train split: there the first `round(n * test_fraction)` charts go to test (at
    least one, and always one fewer than `n`: a single chart goes to train).
    """
    if test_fraction <= 0:
        return "train"
    if n is not None and n <= len(METADATA):
        return "test" if index < min(n - 1, max(1, round(n * test_fraction))) else "train"
    every = max(1, round(1 / test_fraction))
    return "test" if (index // len(METADATA)) % every == 0 else "train"


def make_chart(index: int, seed: int, test_fraction: float, n: Optional[int] = None) -> SynthChart:
    """
    The `index`-th chart of a seeded set of `n`: chart types cycle so every ten charts hold all ten types. The split
    depends on `n` only for sets of ten charts or fewer (see `chart_split`).
    """
    rng = random.Random(seed * 1_000_003 + index)
    chart_type = list(METADATA)[index % len(METADATA)]
    kind = CHART_KINDS[chart_type]
    split = chart_split(index, test_fraction, n)
    pool_name = rng.choice(list(CATEGORY_POOLS))
    subject = rng.choice(SUBJECTS)
    unit = "%" if kind.percent else rng.choice(UNITS)
    floats = rng.random() < 0.2 and not kind.shares
    pool = CATEGORY_POOLS[pool_name]
    start = rng.randrange(0, max(1, len(pool) - 3))
    categories = pool[start : start + rng.randint(3, min(4, len(pool) - start))]
    title = f"{pool_name}별 {subject}"
    blocks = kind.blocks(rng, _Draft(kind, title, unit, floats, categories, kind.legends(rng, categories)))

    stem = f"S_{seed}_{index:07d}_{chart_type}"
    main, sub = METADATA[chart_type]
    annotation = {
        "image": [{"filename": f"{stem}.jpg", "width": CHART_SIZE[0], "height": CHART_SIZE[1]}],
        "metadata": {"chart_main": main, "chart_sub": sub, "source": "synthetic"},
        "annotations": blocks,
    }
    facts = facts_of(blocks)
    annotation["description"] = description(title, chart_type, facts, blocks)
    annotation["summary"] = summary(title, facts)
    return SynthChart(stem, split, chart_type, annotation, expected_table(blocks), qa_record(stem, facts, rng))
