"""Draws a synthetic chart with matplotlib, every value printed on it, in the bundled Korean font."""

from functools import partial

from chartwiz.names import shipped_font_path

from .blocks import numeric, series_of, shown
from .sampling import CHART_SIZE, SynthChart


_FONT_READY = False


def _setup_matplotlib():
    global _FONT_READY
    if _FONT_READY:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager, pyplot

    font_manager.fontManager.addfont(shipped_font_path())
    pyplot.rcParams["font.family"] = font_manager.FontProperties(fname=shipped_font_path()).get_name()
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
    figure = pyplot.figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    try:
        with pyplot.rc_context({"xtick.labelsize": FONT_SIZES["ticks"], "ytick.labelsize": FONT_SIZES["ticks"]}):
            _DRAWERS[chart.chart_type](figure, blocks)
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
        shown(value),
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


def _finish_value_axes(axes, block: dict, horizontal: bool):
    """What bars and lines share once drawn: no value ticks, the unit on the value axis, the legend, no box."""
    _hide_value_axis(axes, horizontal)
    if block["unit"]:
        (axes.set_xlabel if horizontal else axes.set_ylabel)(_unit_label(block), fontsize=FONT_SIZES["legend"])
    if block["legend"]:
        _legend(axes)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def _value_axes(figure, block: dict):
    """The axes of a bar or line chart, and what both draw from: the series, category labels and positions, and the
    largest value."""
    import numpy

    axes = figure.add_subplot(1, 1, 1)
    series = series_of(block)
    labels = [label for label, _ in series[0][1]]
    largest = max(numeric(value) for _, pairs in series for _, value in pairs)
    return axes, series, labels, numpy.arange(len(labels)), largest


def _draw_lines(figure, blocks: list[dict]):
    block = blocks[0]
    axes, series, labels, positions, largest = _value_axes(figure, block)
    lines = [[numeric(value) for _, value in pairs] for _, pairs in series]
    for number, (name, pairs) in enumerate(series):
        (line,) = axes.plot(positions, lines[number], marker="o", linewidth=2.5, label=name or None)
        for x, (_, value) in enumerate(pairs):
            # Of two lines, the upper point's value goes above it and the lower one's below.
            below = len(series) > 1 and lines[number][x] < max(values[x] for values in lines)
            style = {"va": "top" if below else "bottom", "color": line.get_color()}
            _print_value(axes, value, (x, numeric(value)), -9 if below else 7, **style)
    axes.set_xticks(positions, labels)
    axes.set_xlim(-0.5, len(labels) - 0.5)
    smallest = min(min(values) for values in lines)
    axes.set_ylim(min(0, smallest) - 0.15 * largest, largest * 1.25)
    _finish_value_axes(axes, block, horizontal=False)


def _draw_bars(figure, blocks: list[dict], horizontal: bool, stacked: bool):
    import numpy

    block = blocks[0]
    axes, series, labels, positions, largest = _value_axes(figure, block)
    width = 0.75 if stacked or len(series) == 1 else 0.84 / len(series)
    base = numpy.zeros(len(labels))
    for number, (name, pairs) in enumerate(series):
        values = numpy.array([numeric(value) for _, value in pairs])
        offset = positions if stacked or len(series) == 1 else positions - 0.42 + width * (number + 0.5)
        if horizontal:
            bars = axes.barh(offset, values, height=width, left=base if stacked else None, label=name or None)
        else:
            bars = axes.bar(offset, values, width=width, bottom=base if stacked else None, label=name or None)
        texts = [shown(value) for _, value in pairs]
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
    _finish_value_axes(axes, block, horizontal)


def _draw_pie(figure, blocks: list[dict]):
    axes = figure.add_subplot(1, 1, 1)
    block = blocks[0]
    pairs = series_of(block)[0][1]
    texts = [f"{shown(value)}{block['unit']}" for _, value in pairs]
    wedges, _ = axes.pie(
        [numeric(value) for _, value in pairs],
        labels=texts,
        labeldistance=0.62,
        startangle=90,
        counterclock=False,
        textprops={"fontsize": FONT_SIZES["values"], "color": "white"},
    )
    _legend(axes, wedges, [label for label, _ in pairs])
    axes.axis("equal")


def _draw_mix(figure, blocks: list[dict]):
    import numpy

    axes = figure.add_subplot(1, 1, 1)
    bar_name, bar_pairs = series_of(blocks[0])[0]
    line_name, line_pairs = series_of(blocks[1])[0]
    labels = [label for label, _ in bar_pairs]
    positions = numpy.arange(len(labels))
    bar_values = [numeric(value) for _, value in bar_pairs]
    line_values = [numeric(value) for _, value in line_pairs]
    bars = axes.bar(positions, bar_values, width=0.6, color="#4C72B0", label=bar_name)
    axes.bar_label(bars, labels=[shown(value) for _, value in bar_pairs], padding=2, fontsize=FONT_SIZES["values"])
    axes.set_xticks(positions, labels)
    # The bars stay in the lower half and the line runs above them, so their printed values never meet.
    axes.set_ylim(0, max(bar_values) * 2.3)
    twin = axes.twinx()
    (line,) = twin.plot(positions, line_values, color="#DD8452", marker="o", linewidth=2.5, label=line_name)
    for x, (_, value) in zip(positions, line_pairs):
        _print_value(twin, value, (x, numeric(value)), 7, color="#A0522D")
    twin.set_ylim(-1.6 * max(line_values), max(line_values) * 1.25)
    for twin_axes in (axes, twin):
        _hide_value_axis(twin_axes, horizontal=False)
        twin_axes.spines["top"].set_visible(False)
    _legend(axes, [bars, line], [bar_name, line_name])


def _draw_radial(figure, blocks: list[dict]):
    import numpy

    block = blocks[0]
    series = series_of(block)
    labels = [label for label, _ in series[0][1]]
    angles = numpy.linspace(0, 2 * numpy.pi, len(labels), endpoint=False).tolist()
    axes = figure.add_subplot(1, 1, 1, polar=True)
    largest = max(numeric(value) for _, pairs in series for _, value in pairs)
    for name, pairs in series:
        values = [numeric(value) for _, value in pairs]
        (line,) = axes.plot([*angles, angles[0]], [*values, values[0]], marker="o", linewidth=2, label=name or None)
        axes.fill([*angles, angles[0]], [*values, values[0]], alpha=0.15)
        for angle, (_, value) in zip(angles, pairs):
            _print_value(axes, value, (angle, numeric(value)), 6, color=line.get_color())
    axes.set_xticks(angles, labels)
    axes.set_ylim(0, largest * 1.15)
    axes.set_yticklabels([])
    if block["legend"]:
        # In the figure's corner: above the polar plot it would cover the top category's label.
        figure.legend(loc="upper right", fontsize=FONT_SIZES["legend"], frameon=False)


# Each drawer makes its own axes on the figure: a radar chart's are polar.
_DRAWERS = {
    "vertical_bar": partial(_draw_bars, horizontal=False, stacked=False),
    "vertical_bar_stacked": partial(_draw_bars, horizontal=False, stacked=True),
    "vertical_bar_100": partial(_draw_bars, horizontal=False, stacked=True),
    "horizontal_bar": partial(_draw_bars, horizontal=True, stacked=False),
    "horizontal_bar_stacked": partial(_draw_bars, horizontal=True, stacked=True),
    "horizontal_bar_100": partial(_draw_bars, horizontal=True, stacked=True),
    "line": _draw_lines,
    "pie": _draw_pie,
    "radial": _draw_radial,
    "mix": _draw_mix,
}
