"""The report of `chartwiz evaluate`: report.md (tables by task and by chart type, the skipped rows) and report.png."""

import os

from chartwiz.names import shipped_font_path

from .metrics import TASK_METRICS


PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.md"
CHART_FILE = "report.png"
# The two metrics of each task drawn in report.png.
CHART_METRICS = {
    "table": ("rms_f1", "rms_units_f1"),
    "description": ("rouge_l", "bleu"),
    "summary": ("rouge_l", "bleu"),
    "qa": ("relaxed_accuracy", "exact_match"),
}


def _format(value) -> str:
    return f"{value:.1f}"


def render_report(metrics: dict) -> str:
    """The Markdown report: what was scored, one table by task, one table per task by chart type, skipped rows."""
    by_task = metrics["by_task"]
    lines = ["# ChartWiz evaluation", ""]
    source = f"config `{metrics['config']}`, split `{metrics['split']}`" if metrics.get("config") else ""
    if metrics.get("model"):
        lines.append(f"- Model: `{metrics['model']}`")
    if metrics.get("dataset"):
        lines.append(f"- Dataset: `{metrics['dataset']}` ({source})")
    if metrics.get("blank_images"):
        lines.append("- Images: **blank**, every chart replaced by a white image of its size (an image ablation)")
    if metrics.get("shuffled_images"):
        lines.append("- Images: **shuffled**, every row shown the chart of another row (an image ablation)")
    rows = f" of {metrics['rows']}" if metrics.get("rows") is not None else ""
    lines.append(f"- Scored: {metrics['n']}{rows} rows, {len(metrics['skipped'])} skipped (listed below)")
    lines.append(f"- Predictions: `{PREDICTIONS_FILE}` (re-score with `chartwiz evaluate --predictions`)")
    lines += ["", "All metrics in percent. `rms_f1` is the mean of each table's F1 (see docs/metrics.md)."]
    if metrics.get("bleu_signature"):
        lines.append(f"BLEU: sacrebleu `{metrics['bleu_signature']}`.")
    if by_task:
        lines += _score_tables(metrics)
    else:
        lines += ["", "No row was scored: every one was skipped (listed below).", ""]
    if metrics["skipped"]:
        lines += ["## Skipped", ""]
        for entry in metrics["skipped"]:
            if "file" in entry:  # a record of the predictions file
                where = f"`{entry['source']}`"
            else:  # a row of the split; one whose id repeats an earlier row's is named by its place
                named_by_id = entry.get("id") is not None and entry.get("repeats") is None
                where = f"`{entry['id'] if named_by_id else entry.get('source')}`"
            lines.append(f"- {where}: {entry['reason']}")
        lines.append("")
    return "\n".join(lines)


def _score_tables(metrics: dict) -> list[str]:
    """The report's table by task and its tables by chart type, one per task."""
    by_task, lines = metrics["by_task"], ["", "## By task", ""]
    columns = list(dict.fromkeys(metric for task in by_task for metric in TASK_METRICS[task]))
    lines.append("| task | n | " + " | ".join(columns) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for task, scores in by_task.items():
        cells = [_format(scores[metric]) if metric in scores else "" for metric in columns]
        lines.append(f"| {task} | {scores['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## By chart type", "", f"![scores by chart type]({CHART_FILE})", ""]
    for task in by_task:
        lines += [f"### {task}", ""]
        lines.append("| chart type | n | " + " | ".join(TASK_METRICS[task]) + " |")
        lines.append("| --- | ---: | " + " | ".join("---:" for _ in TASK_METRICS[task]) + " |")
        for chart_type, tasks in metrics["by_chart_type"].items():
            if task in tasks:
                cells = [_format(tasks[task][metric]) for metric in TASK_METRICS[task]]
                lines.append(f"| {chart_type} | {tasks[task]['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


_FONT_FAMILY = None


def korean_font_family() -> str:
    """Registers the bundled NanumGothic with matplotlib once; chart types and titles may be Korean."""
    global _FONT_FAMILY
    if _FONT_FAMILY is None:
        from matplotlib import font_manager

        font_manager.fontManager.addfont(shipped_font_path())
        _FONT_FAMILY = font_manager.FontProperties(fname=shipped_font_path()).get_name()
    return _FONT_FAMILY


def draw_chart(metrics: dict, path: str) -> None:
    """
    report.png: one panel per task, the task's two main metrics as horizontal bars (value written at the end) for
    all its rows and then for each chart type.
    """
    import matplotlib
    from matplotlib.figure import Figure

    tasks = list(metrics["by_task"])
    groups = {
        task: [
            ("all", metrics["by_task"][task]),
            *((name, scores[task]) for name, scores in metrics["by_chart_type"].items() if task in scores),
        ]
        for task in tasks
    }
    columns = 2 if len(tasks) > 1 else 1
    rows = max(1, (len(tasks) + 1) // 2)
    tallest = max((len(entries) for entries in groups.values()), default=1)
    with matplotlib.rc_context({"font.family": korean_font_family(), "axes.unicode_minus": False}):
        # A bare Figure draws with Agg and leaves pyplot's global state (and any GUI backend) alone.
        figure = Figure(figsize=(7 * columns, rows * (1.2 + 0.42 * tallest)), layout="constrained")
        axes_grid = figure.subplots(rows, columns, squeeze=False)
        for axes, task in zip(axes_grid.flat, tasks):
            names = CHART_METRICS[task]
            height = 0.8 / len(names)
            for offset, metric in enumerate(names):
                positions = [index + (offset - (len(names) - 1) / 2) * height for index in range(len(groups[task]))]
                bars = axes.barh(
                    positions, [scores[metric] for _, scores in groups[task]], height=height, label=metric
                )
                axes.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)
            axes.set_yticks(
                range(len(groups[task])), [f"{name} (n={scores['n']})" for name, scores in groups[task]], fontsize=8
            )
            axes.invert_yaxis()  # "all" on top
            axes.set_xlim(0, 112)  # room for the value written after a full bar
            axes.set_xticks(range(0, 101, 20))
            axes.set_xlabel("%")
            axes.set_title(task)
            axes.grid(axis="x", alpha=0.3)
            axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(names), fontsize=8, frameon=False)
        for axes in list(axes_grid.flat)[len(tasks) :]:
            axes.set_axis_off()
        if not tasks:
            axes_grid.flat[0].text(0.5, 0.5, "no rows scored", ha="center", va="center")
        source = os.path.basename(os.path.normpath(metrics.get("model") or "predictions"))
        if metrics.get("config"):
            source += f" on {metrics['config']} / {metrics['split']}"
        if metrics.get("blank_images"):
            source += " (blank images)"
        if metrics.get("shuffled_images"):
            source += " (shuffled images)"
        figure.suptitle(f"ChartWiz evaluation: {source}")
        figure.savefig(path, dpi=100)


__all__ = [
    "CHART_FILE",
    "CHART_METRICS",
    "PREDICTIONS_FILE",
    "REPORT_FILE",
    "draw_chart",
    "korean_font_family",
    "render_report",
]
