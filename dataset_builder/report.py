"""
The build report: what each config and split read, wrote and skipped (and why), checked against the shards on disk,
and merged with the configs a build keeps from the one before it.
"""

import collections
import glob
import json
import os
from typing import Optional

import pyarrow.parquet as pq

from chartwiz.errors import ChartWizValueError
from chartwiz.files import write_text_atomic
from chartwiz.names import BUILT_CONFIGS

from .aihub import unknown_folders


REPORT_NAME = "build_report.json"
FAILED_REPORT_NAME = "build_report.failed.json"


def collect_report(report_dir: str) -> dict:
    """The counts and skipped records the builder's jobs wrote, a file each, summed per config and split."""
    counts, skipped = {}, []
    for path in sorted(glob.glob(os.path.join(report_dir, "*.jsonl"))):
        with open(path, encoding="utf-8") as file:
            for line in file:
                entry = json.loads(line)
                key = (entry["config"], entry["split"])
                total = counts.setdefault(key, {"read": 0, "written": 0, "skipped": 0})
                if entry["type"] == "counts":
                    for name in ("read", "written", "skipped"):
                        total[name] += entry[name]
                else:
                    skipped.append({name: value for name, value in entry.items() if name != "type"})
    return {"counts": counts, "skipped": skipped}


def _parquet_rows(output_dir: str, paths: list[str]) -> int:
    return sum(pq.ParquetFile(os.path.join(output_dir, path)).metadata.num_rows for path in paths)


def checked_report(
    collected: dict, shards: dict, output_dir: str, data_dir: str, gpt_files: list[str], splits: list[str]
) -> dict:
    """This build's report; counts that do not add up against the rows on disk stop the build (a bug, not the data)."""
    counts = {}
    for config, by_split in shards.items():
        counts[config] = {}
        for split in splits:
            total = collected["counts"].get((config, split), {"read": 0, "written": 0, "skipped": 0})
            on_disk = _parquet_rows(output_dir, by_split.get(split, []))
            if on_disk != total["written"] or total["read"] != total["written"] + total["skipped"]:
                raise RuntimeError(
                    f"{config}/{split}: read {total['read']}, wrote {total['written']} ({on_disk} rows on disk), "
                    f"skipped {total['skipped']}: the counts do not add up."
                )
            counts[config][split] = {**total, "files": by_split.get(split, [])}
    return {
        "data_dir": data_dir,
        "gpt_files": gpt_files,
        "ignored_folders": {split: unknown_folders(data_dir, split) for split in splits},
        "counts": counts,
        "skipped": collected["skipped"],
    }


def previous_build(output_dir: str) -> Optional[dict]:
    path = os.path.join(output_dir, REPORT_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            report = json.load(file)
    except (ValueError, OSError) as error:
        report = error
    if not isinstance(report, dict) or not {"counts", "skipped", "data_dir"} <= report.keys():
        raise ChartWizValueError(f"{path} is not a build report; delete it (or the whole folder) to build afresh.")
    return report


def kept_configs(previous: Optional[dict], configs: list[str], data_dir: str, output_dir: str) -> list[str]:
    """The configs of the build in `output_dir` that this build does not redo, checked to be mergeable."""
    if previous is None:
        return []
    kept = [config for config in BUILT_CONFIGS if config in previous["counts"] and config not in configs]
    if kept and previous["data_dir"] != data_dir:
        raise ChartWizValueError(
            f"{output_dir} holds a build of {', '.join(kept)} from {previous['data_dir']}; building only "
            f"{', '.join(configs)} from {data_dir} would mix two trees in one dataset. Build "
            f"{', '.join([*configs, *kept])} together, or choose another --out."
        )
    for config in kept:
        for counts in previous["counts"][config].values():
            missing = [path for path in counts["files"] if not os.path.isfile(os.path.join(output_dir, path))]
            if missing:
                raise ChartWizValueError(
                    f"{output_dir}: the {config} shards of the previous build are missing ({missing[0]}); build "
                    f"{config} again too (--configs {' '.join([*configs, config])})."
                )
    return kept


def merged_report(previous: Optional[dict], report: dict, kept: list[str]) -> dict:
    """This build's report with the configs it kept from the previous one (counts, files, skipped records)."""
    if not kept:
        return report
    counts = {**report["counts"], **{config: previous["counts"][config] for config in kept}}
    return {
        **report,
        "gpt_files": previous.get("gpt_files", []) if "gpt" in kept else report["gpt_files"],
        "counts": {config: counts[config] for config in BUILT_CONFIGS if config in counts},
        "skipped": [entry for entry in previous["skipped"] if entry["config"] in kept] + report["skipped"],
        "warnings": [entry for entry in previous.get("warnings", []) if entry["config"] in kept] + report["warnings"],
    }


def _example_reason(report: dict, config: str, split=None) -> str:
    reasons = collections.Counter(
        entry["reason"]
        for entry in report["skipped"]
        if entry["config"] == config and (split is None or entry["split"] == split)
    )
    return reasons.most_common(1)[0][0] if reasons else "no reason recorded"


def empty_split_warnings(report: dict) -> list[dict]:
    """A warning for each split left without a row in a config that has rows elsewhere (all lost: the build fails)."""
    warnings = []
    for config, by_split in report["counts"].items():
        if not any(counts["written"] for counts in by_split.values()):
            continue
        for split, counts in by_split.items():
            if counts["written"]:
                continue
            why = (
                f"all {counts['read']} records were skipped (e.g. {_example_reason(report, config, split)})"
                if counts["read"]
                else "no records found"
            )
            warnings.append({"config": config, "split": split, "message": f"{config}/{split} is empty: {why}"})
    return warnings


def _empty_configs(report: dict) -> list[str]:
    """One line per config of this build that wrote no row: how many records it read and an example reason."""
    problems = []
    for config, by_split in report["counts"].items():
        read = sum(counts["read"] for counts in by_split.values())
        if sum(counts["written"] for counts in by_split.values()):
            continue
        if not read:
            problems.append(f"{config}: no records found")
            continue
        problems.append(f"{config}: all {read} records were skipped (e.g. {_example_reason(report, config)})")
    return problems


def refuse_empty_build(built: dict, output_dir: str, keeps_previous: bool) -> None:
    """
    Stops a build whose configs wrote no row, before it replaces anything; its report goes to `FAILED_REPORT_NAME`,
    which lists every skipped record.
    """
    empty = _empty_configs(built)
    if empty:
        failed_path = os.path.join(output_dir, FAILED_REPORT_NAME)
        write_text_atomic(failed_path, json.dumps(built, ensure_ascii=False, indent=2))
        kept_note = f"{output_dir} keeps its previous build, and " if keeps_previous else ""
        raise ChartWizValueError(
            f"{'; '.join(empty)}. Nothing was written: {kept_note}{failed_path} lists every skipped record."
        )
