"""
`chartwiz evaluate --compare`: several report folders of `chartwiz evaluate` side by side, ChartWiz against other
models and each against its image ablations, as comparison.md (tables by task and by chart type, and what the chart
adds) and comparison.png.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from chartwiz.errors import ChartWizValueError
from chartwiz.files import write_json_atomic, write_text_atomic

from .metrics import TASKS
from .report import CHART_METRICS, korean_font_family


COMPARISON_FILE = "comparison.md"
COMPARISON_CHART = "comparison.png"
COMPARISON_JSON = "comparison.json"
METRICS_FILE = "metrics.json"
# What must be the same for scores to be compared at all.
SAME_DATA = ("dataset", "config", "split")
CHART, BLANK, SHUFFLED = "chart", "blank", "shuffled"


@dataclass
class Run:
    """One report folder: the name it goes by in the tables, where it is, and its metrics.json."""

    label: str
    folder: str
    metrics: dict

    @property
    def images(self) -> str:
        """`chart`, or the image ablation the run was made with: `blank` or `shuffled`."""
        if self.metrics.get("blank_images"):
            return BLANK
        return SHUFFLED if self.metrics.get("shuffled_images") else CHART

    @property
    def model(self) -> str:
        return self.metrics.get("model") or "(predictions file)"


def read_runs(folders: Sequence[str]) -> list[Run]:
    """
    The runs of `folders`, each named by its folder's name (by the path as given where two names are the same).
    Raises `ValueError` for fewer than two folders, a folder without metrics.json, or runs of other data (another
    dataset, config or split), whose scores cannot be compared.
    """
    if len(folders) < 2:
        raise ChartWizValueError(f"--compare needs at least two report folders, got {len(folders)}.")
    runs = []
    for folder in folders:
        path = os.path.join(folder, METRICS_FILE)
        if not os.path.isfile(path):
            raise ChartWizValueError(
                f"{folder}: no {METRICS_FILE}; give folders that `chartwiz evaluate --out` wrote."
            )
        try:
            with open(path, encoding="utf-8") as file:
                metrics = json.load(file)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ChartWizValueError(f"{path}: not a metrics file ({error})") from None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("by_task"), dict):
            raise ChartWizValueError(f"{path}: not a metrics file of `chartwiz evaluate` (no by_task)")
        runs.append(Run(os.path.basename(os.path.normpath(folder)), folder, metrics))
    names = [run.label for run in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = os.path.normpath(run.folder)
    if len({run.label for run in runs}) < len(runs):
        raise ChartWizValueError("--compare got the same report folder twice.")
    for key in SAME_DATA:
        values = {run.metrics.get(key) for run in runs} - {None}
        if len(values) > 1:
            described = ", ".join(f"{run.label}: {run.metrics.get(key)!r}" for run in runs)
            raise ChartWizValueError(
                f"The runs scored different data, so they cannot be compared ({key}: {described})."
            )
    return runs


def compared_tasks(runs: Sequence[Run]) -> list[str]:
    """The tasks scored by any of the runs, in the metrics' order."""
    return [task for task in TASKS if any(task in run.metrics["by_task"] for run in runs)]


def scores_of(run: Run, task: str, chart_type: str = "all") -> dict:
    """A run's scores of one task over all its rows (`all`) or one chart type's; `{}` where it has none."""
    if chart_type == "all":
        return run.metrics["by_task"].get(task, {})
    return run.metrics.get("by_chart_type", {}).get(chart_type, {}).get(task, {})


def chart_types_of(runs: Sequence[Run], task: str) -> list[str]:
    """The chart types any run scored `task` on, in the order the runs list them."""
    return list(
        dict.fromkeys(
            chart_type
            for run in runs
            for chart_type, scores in run.metrics.get("by_chart_type", {}).items()
            if task in scores
        )
    )


def _cell(scores: dict, metric: str) -> str:
    return f"{scores[metric]:.1f}" if metric in scores else "n/a"


def by_task_table(runs: Sequence[Run]) -> list[str]:
    """One row per run: the model, its images, the rows scored and each task's two main metrics (percent)."""
    tasks = compared_tasks(runs)
    columns = [(task, metric) for task in tasks for metric in CHART_METRICS[task]]
    lines = [
        "| run | model | images | scored | " + " | ".join(f"{metric} ({task})" for task, metric in columns) + " |",
        "| --- | --- | --- | ---: |" + " ---: |" * len(columns),
    ]
    for run in runs:
        by_task = run.metrics["by_task"]
        cells = [_cell(by_task.get(task, {}), metric) for task, metric in columns]
        rows = run.metrics.get("rows")
        scored = f"{run.metrics.get('n', 0)}" + (f" of {rows}" if rows is not None else "")
        lines.append(f"| {run.label} | `{run.model}` | {run.images} | {scored} | " + " | ".join(cells) + " |")
    return lines


def by_chart_type_tables(runs: Sequence[Run]) -> list[str]:
    """For each task, its main metric by chart type (rows) and run (columns)."""
    lines = []
    for task in compared_tasks(runs):
        metric = CHART_METRICS[task][0]
        lines += [f"### {task}: {metric}", ""]
        lines.append("| chart type | " + " | ".join(run.label for run in runs) + " |")
        lines.append("| --- |" + " ---: |" * len(runs))
        for chart_type in ["all", *chart_types_of(runs, task)]:
            cells = [_cell(scores_of(run, task, chart_type), metric) for run in runs]
            lines.append(f"| {chart_type} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def chart_gains(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """(run with the charts, ablation run) for each ablation whose model was also run on the charts."""
    with_charts = {run.model: run for run in runs if run.images == CHART}
    return [(with_charts[run.model], run) for run in runs if run.images != CHART and run.model in with_charts]


def chart_gain_table(runs: Sequence[Run]) -> list[str]:
    """Points each main metric loses when a model sees a blank or another row's chart instead of the row's own."""
    pairs = chart_gains(runs)
    if not pairs:
        return []
    tasks = compared_tasks(runs)
    columns = [(task, metric) for task in tasks for metric in CHART_METRICS[task]]
    lines = [
        "| model | against | " + " | ".join(f"{metric} ({task})" for task, metric in columns) + " |",
        "| --- | --- |" + " ---: |" * len(columns),
    ]
    for normal, ablated in pairs:
        cells = []
        for task, metric in columns:
            before = normal.metrics["by_task"].get(task, {}).get(metric)
            after = ablated.metrics["by_task"].get(task, {}).get(metric)
            cells.append("n/a" if before is None or after is None else f"{before - after:+.1f}")
        lines.append(f"| `{normal.model}` | {ablated.label} ({ablated.images}) | " + " | ".join(cells) + " |")
    return lines


def render_comparison(runs: Sequence[Run]) -> str:
    """comparison.md: what was compared, the table by task, what the chart adds, the tables by chart type."""
    first = next((run.metrics for run in runs if run.metrics.get("dataset")), {})
    lines = ["# ChartWiz comparison", ""]
    if first:
        lines.append(f"- Dataset: `{first['dataset']}` (config `{first.get('config')}`, split `{first.get('split')}`)")
    lines += [f"- `{run.label}`: {run.folder}" for run in runs]
    lines += ["", "All metrics in percent (see docs/metrics.md); `images` is `chart`, or the ablation run.", ""]
    lines += ["## By task", "", *by_task_table(runs), ""]
    gains = chart_gain_table(runs)
    if gains:
        lines += ["## What the chart adds", "", "Each main metric with the charts minus the same in the ablation.", ""]
        lines += [*gains, ""]
    lines += ["## By chart type", "", f"![scores by task and chart type]({COMPARISON_CHART})", ""]
    lines += by_chart_type_tables(runs)
    return "\n".join(lines)


def draw_comparison(runs: Sequence[Run], path: str) -> None:
    """comparison.png: one panel per task, its main metric for all rows and each chart type, one bar per run."""
    import matplotlib
    from matplotlib.figure import Figure

    tasks = compared_tasks(runs)
    groups = {task: ["all", *chart_types_of(runs, task)] for task in tasks}
    tallest = max((len(names) for names in groups.values()), default=1)
    with matplotlib.rc_context({"font.family": korean_font_family(), "axes.unicode_minus": False}):
        figure = Figure(figsize=(7 * len(tasks), 1.5 + 0.25 * tallest * len(runs)), layout="constrained")
        axes_row = figure.subplots(1, max(1, len(tasks)), squeeze=False)[0]
        height = 0.8 / len(runs)
        for axes, task in zip(axes_row, tasks):
            metric = CHART_METRICS[task][0]
            for offset, run in enumerate(runs):
                values = [scores_of(run, task, name).get(metric, 0.0) for name in groups[task]]
                positions = [index + (offset - (len(runs) - 1) / 2) * height for index in range(len(groups[task]))]
                bars = axes.barh(positions, values, height=height, label=run.label)
                axes.bar_label(bars, fmt="%.1f", padding=2, fontsize=6)
            axes.set_yticks(range(len(groups[task])), groups[task], fontsize=8)
            axes.invert_yaxis()
            axes.set_xlim(0, 112)
            axes.set_xticks(range(0, 101, 20))
            axes.set_xlabel(f"{metric} (%)")
            axes.set_title(task)
            axes.grid(axis="x", alpha=0.3)
        if tasks:
            handles, labels = axes_row[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="outside lower center", ncols=min(len(runs), 6), frameon=False)
        figure.suptitle("ChartWiz comparison: " + ", ".join(run.label for run in runs))
        figure.savefig(path, dpi=100)


def compare_reports(folders: Sequence[str], out_dir: str) -> list[Run]:
    """Writes comparison.md, comparison.png and comparison.json (the metrics) into `out_dir`; returns the runs."""
    runs = read_runs(folders)
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, COMPARISON_FILE), render_comparison(runs))
    draw_comparison(runs, os.path.join(out_dir, COMPARISON_CHART))
    summary = [{"label": run.label, "folder": run.folder, "images": run.images, **run.metrics} for run in runs]
    write_json_atomic(os.path.join(out_dir, COMPARISON_JSON), summary)
    return runs


__all__ = [
    "COMPARISON_CHART",
    "COMPARISON_FILE",
    "COMPARISON_JSON",
    "Run",
    "by_task_table",
    "compare_reports",
    "draw_comparison",
    "read_runs",
    "render_comparison",
    "scores_of",
]
