"""`chartwiz data build --push-to-hub`: upload a local build to a Hub dataset repo, images embedded."""

import json
import os
from typing import Optional, Union

from chartwiz.errors import ChartWizValueError
from chartwiz.names import BUILT_CONFIGS

from .card import ShardPaths, render_card
from .report import REPORT_NAME


def _hub_report(report: dict) -> dict:
    """The build report as the Hub copy has it: each split's shards are the ones `push_to_hub` names."""
    hub = json.loads(json.dumps(report))
    for config, by_split in hub["counts"].items():
        for split, counts in by_split.items():
            counts["files"] = [f"{config}/{split}-*.parquet"] if counts["files"] else []
    return hub


def push_dataset(
    output_dir: str,
    repo_id: str,
    private: bool = False,
    token: Optional[str] = None,
    max_shard_size: Optional[Union[int, str]] = None,
) -> str:
    """
    Uploads a local build to a Hub dataset repo with `DatasetDict.push_to_hub`, one call per built config (the images
    embedded, shards of at most `max_shard_size`, `configs:` written into the card); returns the last commit's URL.

    Our card and report go first, in a commit of their own: `push_to_hub` keeps the text and metadata of the card it
    finds and adds its config's `data_files` and `dataset_info` to it. The `all` config is not pushed: the card's
    entry for it names finetune's and gpt's shards, as the local card does, instead of uploading those rows twice.
    """
    from datasets import load_dataset
    from huggingface_hub import CommitOperationAdd, HfApi

    with open(os.path.join(output_dir, REPORT_NAME), encoding="utf-8") as file:
        report = json.load(file)
    built = [config for config in BUILT_CONFIGS if config in report["counts"]]
    datasets_by_config = {config: load_dataset(output_dir, config) for config in built}
    if max_shard_size is not None:
        _check_shards_hold_a_row(datasets_by_config, shard_size_in_bytes(max_shard_size), max_shard_size)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    hub_report = _hub_report(report)
    card = render_card(report, images_embedded=True, shard_paths=ShardPaths(output_dir), hub_report=hub_report)
    api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationAdd("README.md", card.encode("utf-8")),
            CommitOperationAdd(REPORT_NAME, json.dumps(hub_report, ensure_ascii=False, indent=2).encode("utf-8")),
        ],
        commit_message="Upload the ChartWiz AI-Hub chart dataset card and build report",
    )
    commit = None
    for config in built:
        commit = datasets_by_config[config].push_to_hub(
            repo_id,
            config_name=config,
            set_default=config == "finetune",
            private=private,
            token=token,
            max_shard_size=max_shard_size,
            commit_message=f"Upload the {config} config of the ChartWiz AI-Hub chart dataset",
        )
    return str(commit)


def shard_size_in_bytes(max_shard_size: Union[int, str]) -> int:
    """`max_shard_size` (`500MB`, `1GiB` or a number of bytes) in bytes, as `push_to_hub` reads it."""
    from datasets.utils.py_utils import convert_file_size_to_int

    if isinstance(max_shard_size, str) and max_shard_size.strip().isdigit():
        max_shard_size = int(max_shard_size)
    try:
        size = convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise ChartWizValueError(
            f"max_shard_size {max_shard_size!r} is not a size: give bytes, or a number with a unit (500MB, 1GiB)."
        ) from None
    if size < 1:
        raise ChartWizValueError(f"max_shard_size must be at least 1 byte, got {max_shard_size!r}.")
    return size


def _check_shards_hold_a_row(datasets_by_config: dict, size: int, given: Union[int, str]) -> None:
    """
    Stops a push whose shards could not hold one row, before anything is uploaded. `push_to_hub` cuts a split into
    whole rows, one more shard per `max_shard_size` of data, and fails deep inside with an IndexError once that is
    more shards than rows; the image files a row points at are most of its size (they are embedded when pushed).
    """
    for config, dataset_dict in datasets_by_config.items():
        for split, dataset in dataset_dict.items():
            if len(dataset) == 0:
                continue
            text_bytes = dataset.data.nbytes / len(dataset)
            # A local build's rows point at their chart's file (several rows at one file), never hold its bytes.
            paths = {image["path"] for image in dataset.data.column("image").to_pylist()}
            image_bytes = max(os.path.getsize(path) for path in paths)
            largest_row = int(image_bytes + text_bytes)
            if largest_row > size:
                raise ChartWizValueError(
                    f"max_shard_size {given!r} ({size} bytes) is smaller than a row of {config}/{split} "
                    f"(up to {largest_row} bytes with its image, which the push embeds): give at least "
                    f"{largest_row} bytes, or leave it out for datasets' 500MB."
                )


__all__ = ["push_dataset"]
