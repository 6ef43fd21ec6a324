"""The dataset card (`README.md`): `configs:` front matter for `load_dataset`, columns, counts and provenance."""

import collections
import hashlib
import os
from collections.abc import Mapping

import pyarrow.parquet as pq
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

from .aihub import CHART_TYPES
from .builder import _DESCRIPTION, _LICENSE, CONFIG_TASKS, FEATURES


def _data_files(report: dict, config: str) -> list[dict]:
    # The shards by name, not by a pattern: a folder in the middle of a rebuild holds two sets side by side, and the
    # card names the one it describes.
    entries = []
    for split in ("train", "test"):
        paths = []
        for part in CONFIG_TASKS[config]:
            paths.extend(report["counts"].get(part, {}).get(split, {}).get("files", []))
        if paths:
            entries.append({"split": split, "paths": paths})
    return entries


class ShardPaths:
    """Where the shards of each config are read from: `directory`, or another folder for some configs."""

    def __init__(self, directory: str, elsewhere: Mapping[str, str] | None = None):
        self.directory, self.elsewhere = directory, dict(elsewhere or {})

    def __call__(self, config: str, path: str) -> str:
        return os.path.join(self.elsewhere.get(config, self.directory), path)


def _split_sizes(paths: list[str]) -> tuple[int, int, int]:
    """(rows, uncompressed bytes, bytes on disk) of a split's Parquet shards."""
    rows = num_bytes = disk = 0
    for path in paths:
        metadata = pq.ParquetFile(path).metadata
        rows += metadata.num_rows
        num_bytes += sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
        disk += os.path.getsize(path)
    return rows, num_bytes, disk


def build_fingerprint(report: dict, config: str, shard_paths: ShardPaths) -> str:
    """
    sha256 of a config's shards (names and bytes, so every row and every image path) and of the AI-Hub tree.

    `datasets` keys its cache of a local folder on the folder's name and the card's metadata, never on the Parquet
    files, so two builds with the same split sizes (a value edited in place, or another tree built into a folder of
    the same name) would share a cache entry. The card puts this fingerprint into each config's `description`, which
    is part of that key.
    """
    digest = hashlib.sha256(f"data_dir={report['data_dir']}\n".encode())
    for part in CONFIG_TASKS[config]:
        for split in ("train", "test"):
            for path in report["counts"].get(part, {}).get(split, {}).get("files", []):
                digest.update(f"{part}/{split}/{path}\n".encode())
                with open(shard_paths(part, path), "rb") as file:
                    for chunk in iter(lambda: file.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()


def read_build_fingerprint(directory: str, config: str) -> str | None:
    """The `build sha256:...` that the card of a `chartwiz data build` folder gives `config`, or None."""
    from huggingface_hub import DatasetCard

    path = os.path.join(directory, "README.md")
    if not os.path.isfile(path):
        return None
    for entry in DatasetCard.load(path).data.to_dict().get("configs") or []:
        description = entry.get("description") or ""
        if entry.get("config_name") == config and description.startswith("build sha256:"):
            return description.removeprefix("build sha256:")
    return None


def _card_data() -> DatasetCardData:
    return DatasetCardData(
        language=["ko"],
        license="other",
        task_categories=["image-text-to-text", "visual-question-answering"],
        pretty_name="ChartWiz AI-Hub charts",
    )


def _hub_front_matter(hub_report: dict) -> str:
    """
    The metadata of the card `push_dataset` uploads before the data: `push_to_hub` adds each config it pushes, with
    its `dataset_info`. `all` is never pushed: its entry names finetune's and gpt's shards, as the local card does.
    """
    card_data = _card_data()
    entries = _data_files(hub_report, "all")
    if entries:
        data_files = [{"split": e["split"], "path": e["paths"]} for e in entries]
        MetadataConfigs({"all": {"data_files": data_files}}).to_dataset_card_data(card_data)
    return f"---\n{card_data.to_yaml()}\n---"


def _front_matter(report: dict, shard_paths: ShardPaths) -> str:
    # The same metadata `push_to_hub` writes; `datasets` also keys its cache of a local folder on it.
    card_data = _card_data()
    configs, infos = {}, {}
    for config in CONFIG_TASKS:
        entries = _data_files(report, config)
        if not entries:
            continue
        configs[config] = {
            "data_files": [{"split": e["split"], "path": e["paths"]} for e in entries],
            "description": f"build sha256:{build_fingerprint(report, config, shard_paths)}",
        }
        if config == "finetune":
            configs[config]["default"] = True
        splits, download_size = SplitDict(), 0
        for entry in entries:
            files = [
                shard_paths(part, path)
                for part in CONFIG_TASKS[config]
                for path in report["counts"].get(part, {}).get(entry["split"], {}).get("files", [])
            ]
            rows, num_bytes, disk = _split_sizes(files)
            splits.add(SplitInfo(name=entry["split"], num_bytes=num_bytes, num_examples=rows))
            download_size += disk
        infos[config] = DatasetInfo(
            config_name=config,
            features=FEATURES,
            splits=splits,
            download_size=download_size,
            dataset_size=sum(split.num_bytes for split in splits.values()),
        )
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    return f"---\n{card_data.to_yaml()}\n---"


def _breakdown(paths: list[str]) -> collections.Counter:
    counter = collections.Counter()
    for path in paths:
        table = pq.read_table(path, columns=["chart_type", "task"])
        counter.update(zip(table.column("chart_type").to_pylist(), table.column("task").to_pylist()))
    return counter


def _count_tables(report: dict, shard_paths: ShardPaths) -> list[str]:
    lines = []
    for config, by_split in report["counts"].items():
        lines += [f"### `{config}`", "", "| split | read | written | skipped |", "| --- | ---: | ---: | ---: |"]
        for split, counts in by_split.items():
            lines.append(f"| {split} | {counts['read']} | {counts['written']} | {counts['skipped']} |")
        counter = collections.Counter()
        for counts in by_split.values():
            counter.update(_breakdown([shard_paths(config, path) for path in counts["files"]]))
        tasks = sorted({task for _, task in counter})
        if tasks:
            lines += ["", "| chart_type | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
            for chart_type in CHART_TYPES:
                lines.append(
                    f"| {chart_type} | " + " | ".join(str(counter[(chart_type, task)]) for task in tasks) + " |"
                )
        lines.append("")
    return lines


def render_card(report: dict, images_embedded: bool, shard_paths: ShardPaths, hub_report: dict | None = None) -> str:
    """
    The text of the dataset card (`README.md`) of a build whose shards `shard_paths` locates; with `hub_report` (the
    report as the Hub copy has it), the card `push_dataset` uploads before `push_to_hub` adds the configs to it.
    """
    storage = (
        "The images are embedded in the Parquet shards (the `image` column holds the JPEG bytes)."
        if images_embedded
        else "The images are not copied: each row's `image` holds the absolute path of the chart in the AI-Hub tree "
        f"(`{report['data_dir']}`), so the three finetune rows of a chart share one file. Keep that tree in place, "
        "or push the dataset (`chartwiz data build ... --push-to-hub REPO`), which embeds the images."
    )
    skipped = sum(entry.get("records", 1) for entry in report["skipped"])
    warnings = [f"- {warning['message']}" for warning in report.get("warnings", [])]
    fingerprints = (
        "Each config's `description` holds a sha256 of its shards and of the AI-Hub tree's location, so that "
        "`datasets` caches every build apart."
        if hub_report is None
        else ""
    )
    body = [
        _front_matter(report, shard_paths) if hub_report is None else _hub_front_matter(hub_report),
        "",
        "# ChartWiz AI-Hub charts",
        "",
        _DESCRIPTION.replace("\n", " "),
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'finetune = load_dataset("path/or/repo", "finetune")  # also: pretrain, gpt, all (finetune + gpt)',
        "```",
        "",
        "## Columns",
        "",
        "| column | content |",
        "| --- | --- |",
        "| `id` | pretrain: the annotation file's stem; finetune: `<stem>-<task>`; gpt: `<conversation id>-<turn>` |",
        "| `image` | the chart (`datasets.Image`) |",
        "| `chart_type` | " + ", ".join(f"`{name}`" for name in CHART_TYPES) + " |",
        "| `task` | `table`, `description`, `summary` or `qa` |",
        '| `prompt` | `[{"role": "user", "content": ...}]`, earlier turns first for multi-turn QA |',
        '| `completion` | `[{"role": "assistant", "content": ...}]` |',
        "",
        "This is TRL's conversational prompt-completion format: `SFTTrainer` puts the image into the first user "
        "turn and the loss on the completion only.",
        "",
        "## Image storage",
        "",
        storage,
        "",
        "## Counts",
        "",
        *_count_tables(report, shard_paths),
        "## Provenance",
        "",
        f"Built by `chartwiz data build` from the AI-Hub chart image-text tree; GPT conversations from "
        f"{len(report['gpt_files'])} file(s). {skipped} record(s) were skipped; `build_report.json` lists each with "
        f"its reason. {fingerprints}".rstrip(),
        "",
        *(["Warnings:", "", *warnings, ""] if warnings else []),
        "## License",
        "",
        _LICENSE,
        "",
    ]
    return "\n".join(body)


__all__ = [
    "ShardPaths",
    "build_fingerprint",
    "read_build_fingerprint",
    "render_card",
]
