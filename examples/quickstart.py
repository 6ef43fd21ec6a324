"""
The whole life of a ChartWiz model on one CPU machine, offline: synthetic AI-Hub charts, their datasets, the tiny
pretrained DePlot encoder shipped in `examples/tiny-deplot` composed with a language model of the shape and tokenizer
of the tiny one shipped in `examples/tiny-lm` and new weights, stage 2 of the real recipe with the
`recipes/chartwiz-tiny` recipes (first its table rows alone, then the whole instruction mix; the projector and the
language model trained, the encoder frozen), evaluation on the held-out test split, and one question answered. Each
step prints the command a user would type.

```bash
make quickstart                                     # sets up .venv, then runs this script
python examples/quickstart.py --out outputs         # the same, in an environment that has chartwiz installed
```

The table at the end compares, on the test split, the untrained model, the trained model, and the trained model in
two image ablations: shown blank white charts (what it scores from the questions and its language prior alone) and
shown the chart of another test row (what any chart gives, without this one). A second table breaks the scores
down by chart type; both are written to `OUT/reports/quickstart.md`.

Every step is seeded and runs on `--threads` torch threads, so the same command on the same machine prints the same
table. An interrupted quickstart continues where it stopped when the same command is run again: finished steps are
skipped, a training stage resumes from its last checkpoint and an evaluation from its last answered batch; a finished
step whose output folder changed since runs again, and so do the steps after it. Other settings, or `--restart`,
start over.
"""

import argparse
import json
import os
import subprocess
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes", "chartwiz-tiny")
TINY_DEPLOT = os.path.join(REPO, "examples", "tiny-deplot")
TINY_LM = os.path.join(REPO, "examples", "tiny-lm")
# The tiny ChartWiz trained for hours by examples/train_tiny_chartwiz.py: what the recipe reaches with more steps.
TINY_CHARTWIZ = os.path.join(REPO, "examples", "tiny-chartwiz")
# Standard deviation of the new language model weights: composed and trained on tables, the pretrained tiny language
# model, or new weights at Llama's 0.02, read far fewer chart titles in the same steps (docs/reading.md).
TEXT_INITIALIZER_RANGE = 0.1
COMPARED = (
    ("table", "rms_f1"),
    ("table", "rms_units_f1"),
    ("qa", "relaxed_accuracy"),
    ("description", "chart_type_named"),
    ("description", "rouge_l"),
)
# The two image ablations beside the trained model, as `chartwiz evaluate` flags.
ABLATIONS = {"blank charts": "--blank-images", "shuffled charts": "--shuffle-images"}
SHIPPED_ROWS = ("shipped", "shipped, blank charts", "shipped, shuffled charts")
BY_CHART_TYPE = (("table", "rms_f1"), ("qa", "relaxed_accuracy"), ("description", "chart_type_named"))
QUESTION = "이 차트를 테이블 정보로 변경해줘."
PROGRESS_FILE = "quickstart.json"
STEPS = 14


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs", help="folder for everything the quickstart makes")
    parser.add_argument("--charts", type=int, default=2000, help="synthetic charts (a twentieth go to the test split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the charts, the model and the training")
    parser.add_argument("--vision", default=TINY_DEPLOT, help="the Pix2Struct / DePlot encoder to compose with")
    parser.add_argument(
        "--text", default=TINY_LM, help="the tiny language model whose shape and tokenizer the new one takes"
    )
    parser.add_argument(
        "--shipped", default=TINY_CHARTWIZ, help="the trained tiny ChartWiz evaluated beside the quickstart's own"
    )
    parser.add_argument("--max-patches", type=int, default=256, help="patches (= image tokens) per chart")
    parser.add_argument("--num-proc", type=int, default=2, help="processes for rendering and building")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every step (results depend on it)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap both stages at this many steps (smoke runs)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="answer length limit in evaluation")
    parser.add_argument("--restart", action="store_true", help="start over instead of continuing an earlier run")
    return parser.parse_args(argv)


class Progress:
    """
    The steps started and finished in `out` by runs with the same settings, kept in `out/quickstart.json`, so that
    rerunning an interrupted quickstart skips the finished steps and lets the one it stopped in resume. A finished
    step whose output (`outputs`: step -> folder) is no longer as it left it runs again, and so do the steps after it.
    """

    def __init__(
        self, out: str, settings: dict, restart: bool = False, outputs: dict | None = None, env: dict | None = None
    ):
        from chartwiz.batch.run_store import changed_settings

        self.path, self.settings, self.started, self.done = os.path.join(out, PROGRESS_FILE), settings, [], []
        self.env = env
        self.timings: list[tuple[str, float]] = []
        self.outputs, self.fingerprints = dict(outputs or {}), {}
        earlier = self._read()
        if not restart and earlier is not None and not changed_settings(earlier.get("settings") or {}, settings):
            self.started, self.done = list(earlier.get("started", [])), list(earlier.get("done", []))
            self.fingerprints = dict(earlier.get("fingerprints", {}))
            for step in list(self.done):
                if step in self.fingerprints and self.fingerprints[step] != self._fingerprint(step):
                    print(
                        f"(step {step}: {self.outputs[step]} changed since it was made; it runs again, and so do the "
                        "steps after it)",
                        flush=True,
                    )
                    position = self.done.index(step)
                    self.started, self.done = self.done[:position], self.done[:position]
                    break
        os.makedirs(out, exist_ok=True)
        self._write()

    def _fingerprint(self, step: str):
        from chartwiz.fingerprints import digest, tree_fingerprint

        return digest(tree_fingerprint(self.outputs[step])) if step in self.outputs else None

    def is_new(self, step: str) -> bool:
        """Whether `step` has not been started with these settings: its output folder then holds nothing to resume."""
        return step not in self.started

    def _read(self):
        from chartwiz.batch.run_store import read_json

        try:
            return read_json(self.path)
        except (OSError, ValueError):  # a file that is not a progress file: start over, as on other settings
            return None

    def _write(self) -> None:
        from chartwiz.files import write_json_atomic

        progress = {"settings": self.settings, "started": self.started, "done": self.done}
        write_json_atomic(self.path, {**progress, "fingerprints": self.fingerprints})

    def run(self, title: str, command: list[str]) -> None:
        """Runs one step as a user would type it, printing the command first and its wall time after."""
        # Shown as typed: `chartwiz ...` and `python ...`, not this interpreter's path.
        words = (
            ["chartwiz", *command[3:]] if command[1:3] == ["-m", "chartwiz.commands.cli"] else ["python", *command[1:]]
        )
        shown = " ".join(word if " " not in word else repr(word) for word in words)
        step = title.split(" ", 1)[0]
        if step in self.done:
            print(f"\n=== {title}\n(done by an earlier run of the quickstart in this folder)", flush=True)
            return
        print(f"\n=== {title}\n$ {shown}", flush=True)
        if step not in self.started:
            self.started.append(step)
            self._write()
        start = time.perf_counter()
        try:
            subprocess.run(command, check=True, cwd=REPO, env=self.env)
        except subprocess.CalledProcessError as error:
            print(
                f"quickstart: error: step {step} failed (exit status {error.returncode}), see its output above. "
                "Run the same command again to continue from this step.",
                file=sys.stderr,
            )
            raise SystemExit(error.returncode) from None
        except KeyboardInterrupt:
            print(f"quickstart: interrupted in step {step}; run the same command again to continue", file=sys.stderr)
            raise SystemExit(130) from None
        self.timings.append((title, time.perf_counter() - start))
        self.done.append(step)
        if step in self.outputs:
            self.fingerprints[step] = self._fingerprint(step)
        self._write()


def chartwiz(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "chartwiz.commands.cli", *arguments]


def evaluate_command(model: str, dataset: str, report_dir: str, max_new_tokens: int, *flags: str) -> list[str]:
    """`chartwiz evaluate` of `model` on the test split of the `all` config, in batches of 16."""
    return chartwiz(
        "evaluate", "--model", model, "--dataset", dataset, "--config", "all", "--split", "test",
        "--max-new-tokens", str(max_new_tokens), "--batch-size", "16", "--out", report_dir, *flags,
    )  # fmt: skip


def recipe(stage: str, model: str, dataset: str, output_dir: str, seed: int, max_steps, overwrite: bool) -> list[str]:
    command = [
        sys.executable,
        os.path.join("recipes", "sft_chartwiz.py"),
        "--config",
        os.path.join(RECIPES, stage, "config_full.yaml"),
        "--model_name_or_path",
        model,
        "--dataset_name",
        dataset,
        "--output_dir",
        output_dir,
        "--seed",
        str(seed),
    ]
    # A continued quickstart resumes the stage from its last checkpoint; a new one starts it over.
    command += [] if not overwrite else ["--overwrite_output_dir"]
    return command + (["--max_steps", str(max_steps)] if max_steps else [])


def report_name(model: str) -> str:
    """The report folder of a compared model: `shipped, blank charts` -> `shipped-blank-charts`."""
    return model.replace(",", "").replace(" ", "-")


def chart_type_named(report_dir: str) -> dict:
    """
    For the description rows of a report's predictions: how many name the chart type their reference names, in
    percent, over all and by chart type (`{"all": {"chart_type_named": p, "n": n}, "<type>": {...}}`).
    """
    from dataset_builder.synth import described_chart_type

    counts: dict[str, list[int]] = {}
    with open(os.path.join(report_dir, "predictions.jsonl"), encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            if row["task"] != "description":
                continue
            named = described_chart_type(row["prediction"]) == described_chart_type(row["reference"])
            for group in ("all", row["chart_type"]):
                counts.setdefault(group, [0, 0])
                counts[group][0] += named
                counts[group][1] += 1
    return {group: {"chart_type_named": 100 * right / n, "n": n} for group, (right, n) in counts.items()}


def read_metrics(report_dir: str) -> dict:
    """The report's scores by task and by chart type, with how often descriptions name the right chart type."""
    with open(os.path.join(report_dir, "metrics.json"), encoding="utf-8") as file:
        metrics = json.load(file)
    by_task, by_chart_type = metrics["by_task"], metrics["by_chart_type"]
    named = chart_type_named(report_dir)
    if "description" in by_task:
        by_task["description"]["chart_type_named"] = named["all"]["chart_type_named"]
        for chart_type, scores in by_chart_type.items():
            if "description" in scores:
                scores["description"]["chart_type_named"] = named[chart_type]["chart_type_named"]
    return {"by_task": by_task, "by_chart_type": by_chart_type}


def comparison_table(reports: dict[str, dict]) -> str:
    """A Markdown table of the compared metrics (percent) for each evaluated model."""
    header = "| model | " + " | ".join(f"{metric} ({task})" for task, metric in COMPARED) + " |"
    lines = [header, "| --- |" + " ---: |" * len(COMPARED)]
    for name, metrics in reports.items():
        by_task = metrics["by_task"]
        cells = [f"{by_task[task][metric]:.1f}" if task in by_task else "n/a" for task, metric in COMPARED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart_type_table(reports: dict[str, dict], models: tuple[str, ...]) -> str:
    """A Markdown table, one row per chart type, of the main metric of each task for `models` side by side."""
    shown = " / ".join(models)
    lines = [
        "| chart type | " + " | ".join(f"{metric} ({task}): {shown}" for task, metric in BY_CHART_TYPE) + " |",
        "| --- |" + " ---: |" * len(BY_CHART_TYPE),
    ]
    for chart_type in reports[models[0]]["by_chart_type"]:
        cells = []
        for task, metric in BY_CHART_TYPE:
            values = [
                reports[model]["by_chart_type"].get(chart_type, {}).get(task, {}).get(metric) for model in models
            ]
            cells.append(" / ".join("n/a" if value is None else f"{value:.1f}" for value in values))
        lines.append(f"| {chart_type} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_test_table_row(dataset: str) -> tuple[str, str]:
    """(image path, reference table) of the first table row of the finetune test split."""
    from datasets import Image, load_dataset

    rows = load_dataset(dataset, "finetune", split="test").cast_column("image", Image(decode=False))
    row = next(row for row in rows if row["task"] == "table")
    return row["image"]["path"], row["completion"][0]["content"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = os.path.abspath(args.out)
    synth, charts, reports = (os.path.join(out, name) for name in ("synth", "charts", "reports"))
    language_model = os.path.join(out, "language-model")
    base, tables, stage2 = (os.path.join(out, f"chartwiz-tiny{suffix}") for suffix in ("", "-tables", "-finetune"))
    started = time.perf_counter()
    procs = str(args.num_proc)
    settings = {
        "charts": args.charts,
        "seed": args.seed,
        "vision": os.path.abspath(args.vision) if os.path.isdir(args.vision) else args.vision,
        "text": os.path.abspath(args.text) if os.path.isdir(args.text) else args.text,
        "text_initializer_range": TEXT_INITIALIZER_RANGE,
        "shipped": os.path.abspath(args.shipped) if os.path.isdir(args.shipped) else args.shipped,
        "max_patches": args.max_patches,
        "threads": args.threads,
        "max_steps": args.max_steps,
        "max_new_tokens": args.max_new_tokens,
    }
    # One thread count for every step: float sums, and so the trained weights, depend on how the work is split.
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    compared = ("untrained", "trained", *ABLATIONS, *SHIPPED_ROWS)
    evaluations = [os.path.join(reports, report_name(name)) for name in compared]
    steps = [synth, charts, language_model, base, tables, stage2, *evaluations]
    outputs = {f"{number}/{STEPS}": folder for number, folder in enumerate(steps, start=1)}
    progress = Progress(out, settings, restart=args.restart, outputs=outputs, env=env)
    seed = str(args.seed)

    progress.run(
        f"1/{STEPS} Synthetic AI-Hub charts (images, annotations, GPT conversations)",
        chartwiz(
            "synth",
            synth,
            "--n",
            str(args.charts),
            "--seed",
            seed,
            "--test-fraction",
            "0.05",
            "--num-proc",
            procs,
            "--overwrite",
        ),
    )
    progress.run(
        f"2/{STEPS} Datasets: pretrain, finetune, gpt and all, as Parquet with a card",
        chartwiz(
            "data",
            "build",
            "--data-dir",
            synth,
            "--gpt",
            f"{synth}/gpt_qa.jsonl",
            "--out",
            charts,
            "--num-proc",
            procs,
        ),
    )
    progress.run(
        f"3/{STEPS} A language model of the tiny one's shape and tokenizer, with new weights",
        chartwiz(
            "init-tiny", language_model, "--language-model-only", "--like", args.text,
            "--initializer-range", str(TEXT_INITIALIZER_RANGE), "--seed", seed, "--overwrite",
        ),
    )  # fmt: skip
    progress.run(
        f"4/{STEPS} ChartWiz from the tiny pretrained DePlot encoder and that language model, and a new projector",
        chartwiz(
            "compose", "--vision", args.vision, "--text", language_model, "--out", base,
            "--max-patches", str(args.max_patches), "--seed", seed, "--overwrite",
        ),
    )  # fmt: skip
    # A projector alone has nothing to align to in a language model with new weights: no stage 1. In the mix alone,
    # whose other tasks it answers from the question, a tiny language model never learnt to read a table.
    progress.run(
        f"5/{STEPS} Stage 2, first its tables: chart -> table asked with the table instruction (projector and LM)",
        recipe("tables", base, charts, tables, args.seed, args.max_steps, overwrite=progress.is_new(f"5/{STEPS}")),
    )
    progress.run(
        f"6/{STEPS} Stage 2: tables, descriptions, summaries and question answering (projector and language model)",
        recipe("finetune", tables, charts, stage2, args.seed, args.max_steps, overwrite=progress.is_new(f"6/{STEPS}")),
    )
    evaluated = {
        "untrained": (base, [], "the untrained model"),
        "trained": (stage2, [], "the trained model"),
        "blank charts": (stage2, [ABLATIONS["blank charts"]], "the trained model shown blank white charts"),
        "shuffled charts": (
            stage2,
            [ABLATIONS["shuffled charts"]],
            "the trained model shown the chart of another test row",
        ),
        "shipped": (args.shipped, [], "the shipped tiny ChartWiz, trained for hours by the same recipe"),
        "shipped, blank charts": (args.shipped, [ABLATIONS["blank charts"]], "the shipped model shown blank charts"),
        "shipped, shuffled charts": (
            args.shipped,
            [ABLATIONS["shuffled charts"]],
            "the shipped model shown the chart of another test row",
        ),
    }
    for number, (name, (model, extra, what)) in enumerate(evaluated.items(), start=7):
        report_dir = os.path.join(reports, report_name(name))
        # An evaluation resumes from the answers in its folder that still hold; a new one starts over there.
        extra = [*extra, "--restart"] if progress.is_new(f"{number}/{STEPS}") else extra
        progress.run(
            f"{number}/{STEPS} Evaluation of {what} on the test split",
            evaluate_command(model, charts, report_dir, args.max_new_tokens, *extra),
        )
    image, reference = first_test_table_row(charts)
    progress.run(
        f"{STEPS}/{STEPS} One question about one test chart, asked the shipped tiny ChartWiz",
        chartwiz("ask", "--model", args.shipped, image, QUESTION),
    )
    print(f"\nReference answer:\n{reference}")

    results = {name: read_metrics(os.path.join(reports, report_name(name))) for name in evaluated}
    summary = comparison_table(results)
    by_type = chart_type_table(results, ("trained", *ABLATIONS))
    shipped_by_type = chart_type_table(results, SHIPPED_ROWS)
    steps = "\n".join(
        ["| step | seconds |", "| --- | ---: |"]
        + [
            f"| {title.split(' ', 1)[0]} {title.split(' ', 1)[1][:60]} | {seconds:.0f} |"
            for title, seconds in progress.timings
        ]
    )
    print(f"\n{summary}\n\nBy chart type (percent), the quickstart's model:\n\n{by_type}")
    print(f"\nBy chart type (percent), the shipped tiny ChartWiz:\n\n{shipped_by_type}\n\n{steps}")
    total = time.perf_counter() - started
    with open(os.path.join(reports, "quickstart.md"), "w", encoding="utf-8") as file:
        file.write(
            f"# Quickstart\n\n{summary}\n\n## By chart type\n\n{by_type}\n\n"
            f"## By chart type, the shipped tiny ChartWiz\n\n{shipped_by_type}\n\n"
            f"## Steps of the last run\n\n{steps}\n"
        )
    print(f"\nTotal: {total / 60:.1f} minutes. Reports: {reports} (summary in {reports}/quickstart.md)")
    return {"metrics": results, "timings": progress.timings, "seconds": total}


if __name__ == "__main__":
    main()
