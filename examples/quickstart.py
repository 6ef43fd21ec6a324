"""
The whole life of a ChartWiz model on one CPU machine, offline: synthetic AI-Hub charts, their datasets, a tiny
model whose tokenizer is trained on them, both training stages with the `recipes/chartwiz-tiny` recipes, evaluation
on the held-out test split, and one question answered. Each step prints the command a user would type.

```bash
make quickstart                                     # sets up .venv, then runs this script
python examples/quickstart.py --out outputs         # the same, in an environment that has chartwiz installed
```

The table at the end compares, on the test split, the untrained model, the trained model, and the trained model
shown blank white charts (an image ablation: what it scores from the questions and its language prior alone).
"""

import argparse
import json
import os
import subprocess
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes", "chartwiz-tiny")
COMPARED = (("table", "rms_f1"), ("table", "rms_units_f1"), ("qa", "relaxed_accuracy"), ("description", "rouge_l"))
QUESTION = "이 차트를 테이블 정보로 변경해줘."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs", help="folder for everything the quickstart makes")
    parser.add_argument("--charts", type=int, default=2000, help="synthetic charts (a twentieth go to the test split)")
    parser.add_argument("--num-proc", type=int, default=2, help="processes for rendering and building")
    parser.add_argument("--max-steps", type=int, default=None, help="cap both stages at this many steps (smoke runs)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="answer length limit in evaluation")
    return parser.parse_args(argv)


def run_step(title: str, command: list[str], timings: list) -> None:
    """Runs one step as a user would type it, printing the command first and its wall time after."""
    # Shown as typed: `chartwiz ...` and `python ...`, not this interpreter's path.
    words = ["chartwiz", *command[3:]] if command[1:3] == ["-m", "chartwiz_hf.cli"] else ["python", *command[1:]]
    shown = " ".join(word if " " not in word else repr(word) for word in words)
    print(f"\n=== {title}\n$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    timings.append((title, time.perf_counter() - start))


def chartwiz(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "chartwiz_hf.cli", *arguments]


def recipe(stage: str, model: str, dataset: str, output_dir: str, max_steps) -> list[str]:
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
        "--overwrite_output_dir",
    ]
    return command + (["--max_steps", str(max_steps)] if max_steps else [])


def read_metrics(report_dir: str) -> dict:
    with open(os.path.join(report_dir, "metrics.json"), encoding="utf-8") as file:
        return json.load(file)["by_task"]


def comparison_table(reports: dict[str, dict]) -> str:
    """A Markdown table of the compared metrics (percent) for each evaluated model."""
    header = "| model | " + " | ".join(f"{metric} ({task})" for task, metric in COMPARED) + " |"
    lines = [header, "| --- |" + " ---: |" * len(COMPARED)]
    for name, metrics in reports.items():
        cells = [f"{metrics[task][metric]:.1f}" if task in metrics else "n/a" for task, metric in COMPARED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    base, stage1, stage2 = (os.path.join(out, f"chartwiz-tiny{suffix}") for suffix in ("", "-pretrain", "-finetune"))
    timings: list[tuple[str, float]] = []
    started = time.perf_counter()
    procs = str(args.num_proc)

    run_step(
        "1/9 Synthetic AI-Hub charts (images, annotations, GPT conversations)",
        chartwiz(
            "synth", synth, "--n", str(args.charts), "--test-fraction", "0.05", "--num-proc", procs, "--overwrite"
        ),
        timings,
    )
    run_step(
        "2/9 Datasets: pretrain, finetune, gpt and all, as Parquet with a card",
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
        timings,
    )
    run_step(
        "3/9 A tiny ChartWiz whose tokenizer learns the datasets' language",
        chartwiz(
            "init-tiny",
            base,
            "--corpus",
            charts,
            "--vocab-size",
            "1000",
            "--hidden-size",
            "128",
            "--max-patches",
            "128",
            "--overwrite",
        ),
        timings,
    )
    run_step(
        "4/9 Stage 1: chart -> table (the tiny recipe trains the encoder too: no pretrained DePlot offline)",
        recipe("pretrain", base, charts, stage1, args.max_steps),
        timings,
    )
    run_step(
        "5/9 Stage 2: tables, descriptions, summaries and question answering",
        recipe("finetune", stage1, charts, stage2, args.max_steps),
        timings,
    )
    evaluated = {
        "untrained": (base, [], "the untrained model"),
        "trained": (stage2, [], "the trained model"),
        "blank charts": (stage2, ["--blank-images"], "the trained model shown blank white charts"),
    }
    for number, (name, (model, extra, what)) in enumerate(evaluated.items(), start=6):
        run_step(
            f"{number}/9 Evaluation of {what} on the test split",
            chartwiz(
                "evaluate",
                "--model",
                model,
                "--dataset",
                charts,
                "--config",
                "all",
                "--split",
                "test",
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--out",
                os.path.join(reports, name.replace(" ", "-")),
                *extra,
            ),
            timings,
        )
    image, reference = first_test_table_row(charts)
    run_step("9/9 One question about one test chart", chartwiz("ask", "--model", stage2, image, QUESTION), timings)
    print(f"\nReference answer:\n{reference}")

    results = {name: read_metrics(os.path.join(reports, name.replace(" ", "-"))) for name in evaluated}
    print("\n" + comparison_table(results))
    print("\n| step | seconds |\n| --- | ---: |")
    for title, seconds in timings:
        print(f"| {title.split(' ', 1)[0]} {title.split(' ', 1)[1][:60]} | {seconds:.0f} |")
    total = time.perf_counter() - started
    print(f"\nTotal: {total / 60:.1f} minutes. Reports: {reports}")
    return {"metrics": results, "timings": timings, "seconds": total}


if __name__ == "__main__":
    main()
