"""
Throughput and peak memory of `chartwiz synth` and `chartwiz data build` (all configs) on synthetic AI-Hub trees.

    python benchmarks/bench_dataset_build.py --sizes 2000 20000 --num-proc 2 --work-dir /tmp/chartwiz-bench

Prints one JSON line per size and an extrapolation to the 240K-chart AI-Hub release.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from peak_rss import run_measured


AIHUB_CHARTS = 240_000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--work-dir", default="/tmp/chartwiz-bench")
    parser.add_argument("--reuse-raw", action="store_true", help="keep synthetic trees of the right size from a run")
    args = parser.parse_args()
    chartwiz = os.path.join(os.path.dirname(sys.executable), "chartwiz")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": os.path.join(args.work_dir, "hf-cache")}
    results = []
    for size in args.sizes:
        raw, out = os.path.join(args.work_dir, f"raw-{size}"), os.path.join(args.work_dir, f"out-{size}")
        shutil.rmtree(out, ignore_errors=True)
        synth = None
        if not (args.reuse_raw and synthetic_charts(raw) == size):
            shutil.rmtree(raw, ignore_errors=True)
            synth = run_measured(
                [chartwiz, "synth", raw, "--n", str(size), "--seed", "0", "--num-proc", str(args.num_proc)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        build = run_measured(
            [
                chartwiz,
                "data",
                "build",
                "--data-dir",
                raw,
                "--gpt",
                os.path.join(raw, "gpt_qa.jsonl"),
                "--out",
                out,
                "--configs",
                "pretrain",
                "finetune",
                "gpt",
                "--num-proc",
                str(args.num_proc),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(os.path.join(out, "build_report.json"), encoding="utf-8") as file:
            report = json.load(file)
        rows = sum(c["written"] for by_split in report["counts"].values() for c in by_split.values())
        result = {
            "charts": size,
            "synth_charts_per_s": size / synth["seconds"] if synth else None,
            "build_seconds": build["seconds"],
            "build_charts_per_s": size / build["seconds"],
            "rows_written": rows,
            "rows_per_s": rows / build["seconds"],
            "skipped": len(report["skipped"]),
            "build_peak_rss_tree_mib": build["peak_rss_tree_mib"],
            "build_peak_rss_single_mib": build["peak_rss_single_mib"],
            "extrapolated_240k_minutes": AIHUB_CHARTS / (size / build["seconds"]) / 60,
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    if len(results) > 1:
        ratio = results[-1]["build_peak_rss_tree_mib"] / results[0]["build_peak_rss_tree_mib"]
        print(json.dumps({"peak_rss_ratio_largest_vs_smallest": ratio}), flush=True)


def synthetic_charts(raw: str) -> int:
    """How many charts a previous `chartwiz synth` wrote into `raw` (0 if none)."""
    manifest = os.path.join(raw, "synth_manifest.jsonl")
    if not os.path.isfile(manifest):
        return 0
    with open(manifest, encoding="utf-8") as file:
        return sum(1 for _ in file)


if __name__ == "__main__":
    main()
