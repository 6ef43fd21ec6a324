"""
Evaluation throughput on CPU: questions answered per second by `chartwiz evaluate`'s generation step (image loading,
preprocessing and greedy generation of a fixed number of tokens, batched longest prompt first) at several batch
sizes, and rows scored per second by the metrics of each task.

    python benchmarks/bench_evaluate.py --model tiny --new-tokens 32
    python benchmarks/bench_evaluate.py --model small --new-tokens 64 --batch-sizes 1 8 --score-rows 4000
"""

import argparse
import atexit
import json
import os
import random
import shutil
import tempfile
import time

import torch
from models import make_model

from chartwiz.batch.questions import load_split
from chartwiz.evaluation.metrics import TASKS
from chartwiz.evaluation.prediction import Prediction, predict_dataset
from chartwiz.evaluation.scoring import score_predictions
from dataset_builder.build import build_dataset
from dataset_builder.synth import generate


def build_charts(work_dir: str, charts: int) -> str:
    """`charts` synthetic charts (half of them in the test split) built into datasets, reused when already there."""
    raw, out = os.path.join(work_dir, f"synth-{charts}"), os.path.join(work_dir, f"charts-{charts}")
    if not os.path.isfile(os.path.join(out, "README.md")):
        generate(raw, charts, seed=0, test_fraction=0.5, progress=False)
        build_dataset(raw, out, gpt_sources=[os.path.join(raw, "gpt_qa.jsonl")], num_proc=1)
    return out


def perturbed(task: str, reference: str, rng: random.Random) -> str:
    """A plausible wrong-ish answer, so that scoring does real work (matching, parsing, LCS) rather than shortcuts."""
    if task == "table":
        lines = reference.split("\n")
        if rng.random() < 0.3 and len(lines) > 2:
            lines.pop(rng.randrange(1, len(lines)))
        text = "\n".join(lines)
        return text.replace("0", "1") if rng.random() < 0.5 else text
    words = reference.split()
    if rng.random() < 0.5 and len(words) > 2:
        words.pop(rng.randrange(len(words)))
    return " ".join(words)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "100m"])
    parser.add_argument("--charts", type=int, default=20, help="synthetic charts (half of them form the test split)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per question")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--score-rows", type=int, default=4000, help="rows per task for the scoring figure")
    parser.add_argument("--work-dir", default=None, help="keeps the synthetic dataset between runs")
    args = parser.parse_args()
    work_dir = args.work_dir
    if work_dir is None:
        work_dir = tempfile.mkdtemp(prefix="bench-evaluate-")
        atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    os.makedirs(work_dir, exist_ok=True)
    dataset = load_split(build_charts(work_dir, args.charts), "all", "test")

    # Generation
    torch.manual_seed(0)
    model, processor = make_model(args.model)
    # A random model stops at random places: a fixed answer length makes batch sizes comparable.
    model.generation_config.min_new_tokens = args.new_tokens
    best = dict.fromkeys(args.batch_sizes, float("inf"))
    for _ in range(args.repeats):
        for batch_size in args.batch_sizes:  # interleaved, so that machine noise hits every size alike
            out_dir = tempfile.mkdtemp(dir=work_dir, prefix="report-")
            summary = predict_dataset(model, processor, dataset, out_dir, batch_size, args.new_tokens, progress=False)
            shutil.rmtree(out_dir)
            assert summary.answered == len(dataset), summary
            best[batch_size] = min(best[batch_size], summary.seconds)
    generation = {
        batch_size: {
            "questions_per_s": len(dataset) / seconds,
            "tokens_per_s": len(dataset) * args.new_tokens / seconds,
        }
        for batch_size, seconds in best.items()
    }

    # Scoring
    rng = random.Random(0)
    rows = [(row["task"], row["chart_type"], row["completion"][0]["content"]) for row in dataset]
    scoring = {}
    for task in TASKS:
        pool = [row for row in rows if row[0] == task]
        predictions = [
            Prediction(f"{task}-{index}", task, chart_type, perturbed(task, reference, rng), reference)
            for index, (_, chart_type, reference) in enumerate(rng.choice(pool) for _ in range(args.score_rows))
        ]
        start = time.perf_counter()
        score_predictions(predictions)  # by task and by chart type, as the report does
        scoring[task] = args.score_rows / (time.perf_counter() - start)

    figures = {
        "model": args.model,
        "questions": len(dataset),
        "new_tokens": args.new_tokens,
        "generation": generation,
        "rows_scored_per_s": scoring,
    }
    print(json.dumps(figures, indent=2))
    print(
        f"\n{len(dataset)} questions ({args.model} model, {args.new_tokens} new tokens each), best of {args.repeats}:"
    )
    for batch_size, figure in generation.items():
        rates = f"{figure['questions_per_s']:.2f} questions/s, {figure['tokens_per_s']:.0f} tokens/s"
        print(f"  batch {batch_size:>3}: {rates}")
    print(f"Scoring ({args.score_rows} rows per task, by task and chart type):")
    for task, rate in scoring.items():
        print(f"  {task:<12} {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
