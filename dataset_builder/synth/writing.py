"""Writes synthetic charts as an AI-Hub tree, with their manifest and QA, and clears an earlier synth output."""

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor

from chartwiz.errors import ChartWizValueError

from ..aihub import CHART_TYPE_FOLDERS, image_dir, text_dir
from .rendering import render_chart
from .sampling import make_chart


FOLDER_OF_TYPE = {chart_type: folder for folder, chart_type in CHART_TYPE_FOLDERS.items()}


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
