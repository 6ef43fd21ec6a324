"""Synthetic AI-Hub charts: the release's layout and JSON schema, rendered by matplotlib with Korean text."""

import json
import os
import random
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional

from chartwiz.errors import ChartWizValueError

from .aihub import CHART_TYPE_FOLDERS, image_dir, text_dir


FOLDER_OF_TYPE = {chart_type: folder for folder, chart_type in CHART_TYPE_FOLDERS.items()}
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
KOREAN_TYPE_NAMES = {
    "vertical_bar": "세로 막대",
    "vertical_bar_stacked": "세로 누적 막대",
    "vertical_bar_100": "세로 100% 누적 막대",
    "horizontal_bar": "가로 막대",
    "horizontal_bar_stacked": "가로 누적 막대",
    "horizontal_bar_100": "가로 100% 누적 막대",
    "line": "꺾은선",
    "pie": "원형",
    "radial": "방사형",
    "mix": "혼합형",
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


def _number(rng: random.Random, low: float, high: float, floats: bool):
    if floats:
        return round(rng.uniform(low, high), 1)
    return rng.randint(int(low), int(high))


def _as_typed(rng: random.Random, value):
    # Annotators sometimes typed numbers as strings; the table keeps such a string as it is.
    return str(value) if rng.random() < 0.1 else value


def _shown(value) -> str:
    return value if isinstance(value, str) else (str(value) if isinstance(value, int) else repr(value))


def _numeric(value) -> float:
    return float(value) if not isinstance(value, str) else float(value.replace(",", ""))


def _hundred_percent_rows(rng: random.Random, legends: int, categories: int) -> list[list]:
    columns = []
    for _ in range(categories):
        # Shares of at least 8%: a thinner segment has no room for its printed value.
        cuts = sorted(rng.sample(range(1, 100 - 7 * legends), legends - 1))
        cuts = [cut + 7 * number for number, cut in enumerate(cuts, start=1)]
        columns.append([b - a for a, b in zip([0, *cuts], [*cuts, 100])])
    return [[columns[column][row] for column in range(categories)] for row in range(legends)]


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
    split = chart_split(index, test_fraction, n)
    pool_name = rng.choice(list(CATEGORY_POOLS))
    subject = rng.choice(SUBJECTS)
    unit = "%" if chart_type.endswith("_100") or chart_type == "pie" else rng.choice(UNITS)
    floats = rng.random() < 0.2 and not chart_type.endswith("_100")
    title = f"{pool_name}별 {subject}"
    horizontal = chart_type.startswith("horizontal")
    pool = CATEGORY_POOLS[pool_name]
    start = rng.randrange(0, max(1, len(pool) - 3))
    categories = pool[start : start + rng.randint(3, min(4, len(pool) - start))]
    # At most two series: a third one's printed values have no room at the sizes a tiny encoder reads.
    if chart_type in ("vertical_bar", "horizontal_bar"):
        n_legends = 0 if rng.random() < 0.6 else 2
    else:
        n_legends = rng.randint(1, 2) if chart_type in ("line", "radial") else 2
    # Pie slices are named by the legend, with no axis labels.
    legends = list(categories) if chart_type == "pie" else rng.sample(LEGEND_POOL, n_legends)

    blocks = []
    if chart_type == "pie":
        shares = _hundred_percent_rows(rng, len(legends), 1)
        values = [row[0] for row in shares]
        data_label = [values] if rng.random() < 0.5 else [[value] for value in values]
        blocks.append(
            {
                "title": title,
                "unit": unit,
                "legend": legends,
                "axis_label": {"x_axis": [], "y_axis": []},
                "data_label": data_label,
            }
        )
    elif chart_type == "mix":
        bar_legend, line_legend = rng.sample(LEGEND_POOL, 2)
        line_unit = rng.choice(["%", "명", "개"])
        bar_values = [_number(rng, 10, 500, floats) for _ in categories]
        line_values = [_number(rng, 1, 100, True) for _ in categories]
        blocks.append(
            {
                "title": title,
                "unit": unit,
                "legend": [bar_legend],
                "axis_label": {"x_axis": list(categories), "y_axis": []},
                "data_label": [bar_values],
            }
        )
        blocks.append(
            {
                "title": f"{bar_legend} 대비 {line_legend}",
                "unit": line_unit,
                "legend": [line_legend],
                "axis_label": {"x_axis": list(categories), "y_axis": []},
                "data_label": [line_values],
            }
        )
    else:
        rows_needed = max(1, n_legends)
        if chart_type.endswith("_100"):
            rows_needed = max(2, n_legends)
            legends = legends or rng.sample(LEGEND_POOL, rows_needed)
            rows = _hundred_percent_rows(rng, rows_needed, len(categories))
        else:
            # Stacked segments print their value inside and radar points near the centre crowd together: neither
            # may be too small for its printed value.
            low = {"vertical_bar_stacked": 100, "horizontal_bar_stacked": 100, "radial": 200}.get(chart_type, 5)
            rows = [[_number(rng, low, 900, floats) for _ in categories] for _ in range(rows_needed)]
        rows = [[_as_typed(rng, value) for value in row] for row in rows]
        axes = {"x_axis": [], "y_axis": list(categories)} if horizontal else {"x_axis": list(categories), "y_axis": []}
        data_label = rows if legends or rng.random() < 0.5 else rows[0]
        blocks.append({"title": title, "unit": unit, "legend": legends, "axis_label": axes, "data_label": data_label})

    stem = f"S_{seed}_{index:07d}_{chart_type}"
    main, sub = METADATA[chart_type]
    annotation = {
        "image": [{"filename": f"{stem}.jpg", "width": CHART_SIZE[0], "height": CHART_SIZE[1]}],
        "metadata": {"chart_main": main, "chart_sub": sub, "source": "synthetic"},
        "annotations": blocks,
    }
    facts = _facts(blocks)
    annotation["description"] = _description(title, chart_type, facts, blocks)
    annotation["summary"] = _summary(title, facts)
    return SynthChart(stem, split, chart_type, annotation, _expected_table(blocks), _qa(stem, facts, rng))


def _series(block: dict) -> list[tuple[str, list[tuple[str, object]]]]:
    """[(series name, [(label, value)])] of a block, in data order."""
    rows = block["data_label"] if isinstance(block["data_label"][0], list) else [block["data_label"]]
    categories = block["axis_label"]["x_axis"] or block["axis_label"]["y_axis"]
    if not categories:
        values = rows[0] if len(rows) == 1 else [row[0] for row in rows]
        return [("", list(zip(block["legend"], values)))]
    names = block["legend"] or [""]
    return [(name, list(zip(categories, row))) for name, row in zip(names, rows)]


def _expected_table(blocks: list[dict]) -> str:
    lines = [f"TITLE | {blocks[0]['title']}"]
    header_done = False
    for block in blocks:
        categories = block["axis_label"]["x_axis"] or block["axis_label"]["y_axis"]
        if block["legend"] and categories and not header_done:
            lines.append("| " + " | ".join(categories))
            header_done = True
        for name, pairs in _series(block):
            cells = [f"{_shown(value)}{block['unit']}" for _, value in pairs]
            if block["legend"] and categories:
                lines.append(" | ".join([name, *cells]))
            else:
                lines.extend(f"{label} | {cell}" for (label, _), cell in zip(pairs, cells))
    return "\n".join(lines)


def _facts(blocks: list[dict]) -> list[dict]:
    facts = []
    for block in blocks:
        for name, pairs in _series(block):
            for label, value in pairs:
                facts.append(
                    {
                        "series": name,
                        "label": label,
                        "value": _numeric(value),
                        "shown": _shown(value),
                        "unit": block["unit"],
                    }
                )
    return facts


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:.1f}".rstrip("0").rstrip(".")


def _name(fact: dict) -> str:
    return f"{fact['series']}의 {fact['label']}" if fact["series"] else fact["label"]


def _description(title: str, chart_type: str, facts: list[dict], blocks: list[dict]) -> str:
    largest = max(facts, key=lambda fact: fact["value"])
    smallest = min(facts, key=lambda fact: fact["value"])
    series = [name for block in blocks for name in block["legend"]]
    parts = [f"이 차트는 '{title}'을(를) 나타낸 {KOREAN_TYPE_NAMES[chart_type]} 차트입니다."]
    if series:
        parts.append(f"범례는 {', '.join(series)}(으)로 구성되어 있습니다.")
    parts.append(f"가장 큰 값은 {_name(largest)}으로 {largest['shown']}{largest['unit']}입니다.")
    parts.append(f"가장 작은 값은 {_name(smallest)}으로 {smallest['shown']}{smallest['unit']}입니다.")
    return " ".join(parts)


_DESCRIBED_TYPE = re.compile(r"나타낸 (.+?) 차트입니다")
_TYPE_OF_KOREAN_NAME = {name: chart_type for chart_type, name in KOREAN_TYPE_NAMES.items()}


def described_chart_type(description: str) -> Optional[str]:
    """The chart type a description in the synthetic wording names (`... 나타낸 꺾은선 차트입니다.`), or None."""
    match = _DESCRIBED_TYPE.search(description)
    return _TYPE_OF_KOREAN_NAME.get(match.group(1)) if match else None


def _summary(title: str, facts: list[dict]) -> list[str]:
    largest = max(facts, key=lambda fact: fact["value"])
    smallest = min(facts, key=lambda fact: fact["value"])
    gap = largest["value"] - smallest["value"]
    return [
        f"'{title}' 차트에서 {_name(largest)}이(가) {largest['shown']}{largest['unit']}로 가장 높습니다.",
        f"가장 낮은 {_name(smallest)}과(와)의 차이는 {_fmt(gap)}{largest['unit']}입니다.",
    ]


def _qa(stem: str, facts: list[dict], rng: random.Random) -> dict:
    """A LLaVA-format conversation whose answers are computed from the data, with follow-up turns."""
    same_unit = [fact for fact in facts if fact["unit"] == facts[0]["unit"]]
    largest = max(same_unit, key=lambda fact: fact["value"])
    smallest = min(same_unit, key=lambda fact: fact["value"])
    first, second = rng.sample(same_unit, 2)
    unit = facts[0]["unit"]
    turns = [
        ("가장 큰 값을 가진 항목은 무엇인가요?", f"{_name(largest)}이(가) {largest['shown']}{unit}로 가장 큽니다."),
        ("그럼 가장 작은 항목은요?", f"{_name(smallest)}이(가) {smallest['shown']}{unit}로 가장 작습니다."),
        (f"{_name(first)}의 값은 얼마인가요?", f"{first['shown']}{unit}입니다."),
        (
            f"{_name(first)}과(와) {_name(second)}의 차이는 얼마인가요?",
            f"{_fmt(abs(first['value'] - second['value']))}{unit} 차이가 납니다.",
        ),
        (
            "모든 값을 더하면 얼마인가요?",
            f"합계는 {_fmt(round(sum(fact['value'] for fact in same_unit), 1))}{unit}입니다.",
        ),
        (
            f"{_name(first)}과(와) {_name(second)} 중 어느 쪽이 더 큰가요?",
            "두 값이 같습니다."
            if first["value"] == second["value"]
            else f"{_name(first if first['value'] > second['value'] else second)}이(가) 더 큽니다.",
        ),
    ]
    chosen = turns[:2] + rng.sample(turns[2:], rng.randint(1, 3))
    conversations = []
    for number, (question, answer) in enumerate(chosen):
        conversations.append({"from": "human", "value": f"<image>\n{question}" if number == 0 else question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": stem, "image": f"{stem}.jpg", "conversations": conversations}


_FONT_READY = False


def _setup_matplotlib():
    global _FONT_READY
    if _FONT_READY:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager, pyplot

    from chartwiz_hf.image_processing_chartwiz import bundled_font_path

    font_manager.fontManager.addfont(bundled_font_path())
    pyplot.rcParams["font.family"] = font_manager.FontProperties(fname=bundled_font_path()).get_name()
    pyplot.rcParams["axes.unicode_minus"] = False
    _FONT_READY = True


# Every chart is drawn small with large text and its values printed on it, so that the few hundred 16 x 16 patches a
# tiny encoder sees (a 640 x 480 chart shrinks to about 280 x 210 pixels at 256 patches under the DePlot header) still
# hold legible labels and numbers: text about 10 pixels high there. The value axis has no tick labels, so the printed
# values are the only numbers on the chart.
FONT_SIZES = {"title": 24, "ticks": 18, "values": 17, "legend": 16}


def render_chart(chart: SynthChart, path: str, size: tuple[int, int] = CHART_SIZE):
    """Draws the chart the annotation describes, every value printed on it, and saves it as a JPEG."""
    _setup_matplotlib()
    from matplotlib import pyplot

    blocks = chart.annotation["annotations"]
    kind = chart.chart_type
    figure = pyplot.figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    try:
        with pyplot.rc_context({"xtick.labelsize": FONT_SIZES["ticks"], "ytick.labelsize": FONT_SIZES["ticks"]}):
            if kind == "radial":
                _draw_radial(figure, blocks[0])
            else:
                axes = figure.add_subplot(1, 1, 1)
                if kind == "pie":
                    _draw_pie(axes, blocks[0])
                elif kind == "mix":
                    _draw_mix(axes, blocks)
                else:
                    _draw_bars_or_lines(axes, blocks[0], kind)
            figure.suptitle(blocks[0]["title"], fontsize=FONT_SIZES["title"])
            figure.tight_layout(pad=0.4)
        figure.savefig(path, format="jpeg", pil_kwargs={"quality": 90})
    finally:
        pyplot.close(figure)


def _unit_label(block: dict) -> str:
    return f"단위: {block['unit']}" if block["unit"] else ""


def _legend(axes, handles=None, labels=None, **kwargs):
    arguments = () if handles is None else (handles, labels)
    # Above the plot, in one row: never over a bar or a printed value.
    axes.legend(
        *arguments,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncols=4,
        fontsize=FONT_SIZES["legend"],
        frameon=False,
        borderaxespad=0.1,
        **kwargs,
    )


def _print_value(axes, value, point: tuple, offset: float, **style):
    """Writes `value` as the annotation shows it, centred `offset` points above `point` (below when negative)."""
    axes.annotate(
        _shown(value),
        point,
        textcoords="offset points",
        xytext=(0, offset),
        ha="center",
        fontsize=FONT_SIZES["values"],
        **style,
    )


def _hide_value_axis(axes, horizontal: bool):
    axis = axes.xaxis if horizontal else axes.yaxis
    axis.set_ticklabels([])
    axis.set_tick_params(length=0)


def _draw_bars_or_lines(axes, block: dict, kind: str):
    import numpy

    series = _series(block)
    labels = [label for label, _ in series[0][1]]
    positions = numpy.arange(len(labels))
    horizontal = kind.startswith("horizontal")
    stacked = kind.endswith("_stacked") or kind.endswith("_100")
    largest = max(_numeric(value) for _, pairs in series for _, value in pairs)
    if kind == "line":
        lines = [[_numeric(value) for _, value in pairs] for _, pairs in series]
        for number, (name, pairs) in enumerate(series):
            (line,) = axes.plot(positions, lines[number], marker="o", linewidth=2.5, label=name or None)
            for x, (_, value) in enumerate(pairs):
                # Of two lines, the upper point's value goes above it and the lower one's below.
                below = len(series) > 1 and lines[number][x] < max(values[x] for values in lines)
                style = {"va": "top" if below else "bottom", "color": line.get_color()}
                _print_value(axes, value, (x, _numeric(value)), -9 if below else 7, **style)
        axes.set_xticks(positions, labels)
        axes.set_xlim(-0.5, len(labels) - 0.5)
        smallest = min(min(values) for values in lines)
        axes.set_ylim(min(0, smallest) - 0.15 * largest, largest * 1.25)
    else:
        width = 0.75 if stacked or len(series) == 1 else 0.84 / len(series)
        base = numpy.zeros(len(labels))
        for number, (name, pairs) in enumerate(series):
            values = numpy.array([_numeric(value) for _, value in pairs])
            offset = positions if stacked or len(series) == 1 else positions - 0.42 + width * (number + 0.5)
            if horizontal:
                bars = axes.barh(offset, values, height=width, left=base if stacked else None, label=name or None)
            else:
                bars = axes.bar(offset, values, width=width, bottom=base if stacked else None, label=name or None)
            texts = [_shown(value) for _, value in pairs]
            # Stacked segments carry their value inside, white on the bar's color; single bars above or after.
            where = {"label_type": "center", "color": "white"} if stacked else {"padding": 2}
            axes.bar_label(bars, labels=texts, fontsize=FONT_SIZES["values"], **where)
            if stacked:
                base = base + values
        top = base.max() if stacked else largest
        if horizontal:
            axes.set_yticks(positions, labels)
            axes.invert_yaxis()
            axes.set_xlim(0, top * (1.02 if stacked else 1.2))
        else:
            axes.set_xticks(positions, labels)
            axes.set_ylim(0, top * (1.02 if stacked else 1.15))
    _hide_value_axis(axes, horizontal)
    if block["unit"]:
        (axes.set_xlabel if horizontal else axes.set_ylabel)(_unit_label(block), fontsize=FONT_SIZES["legend"])
    if block["legend"]:
        _legend(axes)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def _draw_pie(axes, block: dict):
    pairs = _series(block)[0][1]
    texts = [f"{_shown(value)}{block['unit']}" for _, value in pairs]
    wedges, _ = axes.pie(
        [_numeric(value) for _, value in pairs],
        labels=texts,
        labeldistance=0.62,
        startangle=90,
        counterclock=False,
        textprops={"fontsize": FONT_SIZES["values"], "color": "white"},
    )
    _legend(axes, wedges, [label for label, _ in pairs])
    axes.axis("equal")


def _draw_mix(axes, blocks: list[dict]):
    import numpy

    bar_name, bar_pairs = _series(blocks[0])[0]
    line_name, line_pairs = _series(blocks[1])[0]
    labels = [label for label, _ in bar_pairs]
    positions = numpy.arange(len(labels))
    bar_values = [_numeric(value) for _, value in bar_pairs]
    line_values = [_numeric(value) for _, value in line_pairs]
    bars = axes.bar(positions, bar_values, width=0.6, color="#4C72B0", label=bar_name)
    axes.bar_label(bars, labels=[_shown(value) for _, value in bar_pairs], padding=2, fontsize=FONT_SIZES["values"])
    axes.set_xticks(positions, labels)
    # The bars stay in the lower half and the line runs above them, so their printed values never meet.
    axes.set_ylim(0, max(bar_values) * 2.3)
    twin = axes.twinx()
    (line,) = twin.plot(positions, line_values, color="#DD8452", marker="o", linewidth=2.5, label=line_name)
    for x, (_, value) in zip(positions, line_pairs):
        _print_value(twin, value, (x, _numeric(value)), 7, color="#A0522D")
    twin.set_ylim(-1.6 * max(line_values), max(line_values) * 1.25)
    for twin_axes in (axes, twin):
        _hide_value_axis(twin_axes, horizontal=False)
        twin_axes.spines["top"].set_visible(False)
    _legend(axes, [bars, line], [bar_name, line_name])


def _draw_radial(figure, block: dict):
    import numpy

    series = _series(block)
    labels = [label for label, _ in series[0][1]]
    angles = numpy.linspace(0, 2 * numpy.pi, len(labels), endpoint=False).tolist()
    axes = figure.add_subplot(1, 1, 1, polar=True)
    largest = max(_numeric(value) for _, pairs in series for _, value in pairs)
    for name, pairs in series:
        values = [_numeric(value) for _, value in pairs]
        (line,) = axes.plot([*angles, angles[0]], [*values, values[0]], marker="o", linewidth=2, label=name or None)
        axes.fill([*angles, angles[0]], [*values, values[0]], alpha=0.15)
        for angle, (_, value) in zip(angles, pairs):
            _print_value(axes, value, (angle, _numeric(value)), 6, color=line.get_color())
    axes.set_xticks(angles, labels)
    axes.set_ylim(0, largest * 1.15)
    axes.set_yticklabels([])
    if block["legend"]:
        # In the figure's corner: above the polar plot it would cover the top category's label.
        figure.legend(loc="upper right", fontsize=FONT_SIZES["legend"], frameon=False)


def _write_chart(job: tuple[str, int, int, float, int]) -> tuple[str, str]:
    out_dir, index, seed, test_fraction, n = job
    chart = make_chart(index, seed, test_fraction, n)
    folder = FOLDER_OF_TYPE[chart.chart_type]
    render_chart(chart, os.path.join(image_dir(out_dir, chart.split, folder), f"{chart.stem}.jpg"))
    with open(
        os.path.join(text_dir(out_dir, chart.split, folder), f"{chart.stem}.json"), "w", encoding="utf-8"
    ) as file:
        json.dump(chart.annotation, file, ensure_ascii=False, indent=1)
    manifest = {
        "stem": chart.stem,
        "split": chart.split,
        "chart_type": chart.chart_type,
        "table": chart.expected_table,
    }
    return json.dumps(manifest, ensure_ascii=False), json.dumps(chart.qa, ensure_ascii=False)


MANIFEST_NAME = "synth_manifest.jsonl"
# The names of synth's charts, to find those of a run killed before its manifest listed them.
_CHART_FILE = re.compile(r"S_\d+_\d{7}_\w+\.(jpg|json)")


def _written_by_synth(out_dir: str) -> list[str]:
    """The chart files of an earlier synth output: those its manifest lists, and any of a killed run, by name."""
    listed = set()
    with open(os.path.join(out_dir, MANIFEST_NAME), encoding="utf-8") as file:
        for line in file:
            try:
                listed.add(json.loads(line)["stem"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a kill
    found = []
    for split in ("train", "test"):
        for folder in CHART_TYPE_FOLDERS:
            for directory in (image_dir(out_dir, split, folder), text_dir(out_dir, split, folder)):
                if not os.path.isdir(directory):
                    continue
                for name in sorted(os.listdir(directory)):
                    if os.path.splitext(name)[0] in listed or _CHART_FILE.fullmatch(name):
                        found.append(os.path.join(directory, name))
    return found


def _clear_output(out_dir: str, overwrite: bool) -> None:
    """
    Refuses a folder with files in it (the next build would read them too), or removes what an earlier synth run
    wrote there, and only that: files a user added under the tree stay, and so do the folders holding them.
    """
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not overwrite:
        raise ChartWizValueError(
            f"{out_dir} is not empty; its charts would mix with the new ones. Pass --overwrite to replace an earlier "
            "`chartwiz synth` output there, or choose an empty folder."
        )
    if not os.path.isfile(os.path.join(out_dir, MANIFEST_NAME)):
        raise ChartWizValueError(
            f"{out_dir} holds files but no {MANIFEST_NAME}, so `chartwiz synth` did not write it; --overwrite only "
            "replaces synth outputs. Choose an empty folder."
        )
    for path in _written_by_synth(out_dir):
        os.remove(path)
    for name in ("gpt_qa.jsonl", MANIFEST_NAME):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    for split in ("train", "test"):
        # Deepest first: the chart-type folders, img_data/ and text_data/, the split, where nothing else is left.
        for folder, _, _ in sorted(os.walk(os.path.join(out_dir, split)), key=lambda entry: -entry[0].count(os.sep)):
            if not os.listdir(folder):
                os.rmdir(folder)


def generate(
    out_dir: str,
    n: int,
    seed: int = 0,
    test_fraction: float = 0.1,
    num_proc: int = 1,
    progress: bool = True,
    overwrite: bool = False,
):
    """
    Writes `n` synthetic charts as an AI-Hub tree under `out_dir`, plus `gpt_qa.jsonl` (LLaVA conversations whose
    answers are computed from the data) and `synth_manifest.jsonl` (each chart's expected table text).

    Args:
        out_dir (`str`): an empty or new folder, or an earlier synth output with `overwrite=True`.
        n (`int`): number of charts; from 2 on both splits get charts, a single chart goes to train.
        seed (`int`, defaults to 0): the same seed gives the same files.
        test_fraction (`float`, defaults to 0.1): share of the charts in the test split, from 0 to 0.5.
        num_proc (`int`, defaults to 1): rendering processes.
        progress (`bool`, defaults to `True`): show a progress bar.
        overwrite (`bool`, defaults to `False`): replace the charts of an earlier synth output in `out_dir`.
    """
    if n < 1:
        raise ChartWizValueError(f"--n must be at least 1, got {n}.")
    if not 0 <= test_fraction <= 0.5:
        raise ChartWizValueError(
            f"--test-fraction must be between 0 and 0.5 (test is the smaller split), got {test_fraction}"
        )
    if num_proc < 1:
        raise ChartWizValueError(f"--num-proc must be at least 1, got {num_proc}.")
    _clear_output(out_dir, overwrite)
    for split in ("train", "test"):
        for folder in CHART_TYPE_FOLDERS:
            os.makedirs(image_dir(out_dir, split, folder), exist_ok=True)
            os.makedirs(text_dir(out_dir, split, folder), exist_ok=True)
    from tqdm.auto import tqdm

    jobs = [(out_dir, index, seed, test_fraction, n) for index in range(n)]
    with (
        open(os.path.join(out_dir, MANIFEST_NAME), "w", encoding="utf-8") as manifest_file,
        open(os.path.join(out_dir, "gpt_qa.jsonl"), "w", encoding="utf-8") as qa_file,
    ):
        if num_proc > 1:
            with ProcessPoolExecutor(max_workers=num_proc) as pool:
                results = pool.map(_write_chart, jobs, chunksize=16)
                for manifest, qa in tqdm(results, total=n, desc="Rendering charts", disable=not progress):
                    manifest_file.write(manifest + "\n")
                    qa_file.write(qa + "\n")
        else:
            for job in tqdm(jobs, desc="Rendering charts", disable=not progress):
                manifest, qa = _write_chart(job)
                manifest_file.write(manifest + "\n")
                qa_file.write(qa + "\n")


__all__ = ["CHART_SIZE", "SynthChart", "chart_split", "described_chart_type", "generate", "make_chart", "render_chart"]
