"""`chartwiz data build`: run the builder per config and split, write Parquet shards, a card and a build report."""

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizOSError, ChartWizValueError
from chartwiz.names import BUILT_CONFIGS

from .aihub import check_tree
from .builder import CONFIG_TASKS, ChartWizAIHub
from .card import ShardPaths, render_card
from .hub import push_dataset, shard_size_in_bytes
from .report import (
    FAILED_REPORT_NAME,
    REPORT_NAME,
    checked_report,
    collect_report,
    empty_split_warnings,
    kept_configs,
    merged_report,
    previous_build,
    refuse_empty_build,
)
from .rows import repeated_conversations


logger = logging.getLogger(__name__)
LOCAL_ROWS_PER_SHARD = 250_000
LOCK_NAME = ".build.lock"
STAGING_PREFIX = ".build-"


def expand_gpt_sources(sources: Iterable[str]) -> list[str]:
    """GPT conversation files from files and folders (`*.json` and `*.jsonl` inside, sorted)."""
    files = []
    for source in sources:
        if os.path.isdir(source):
            found = sorted(glob.glob(os.path.join(source, "**", "*.json*"), recursive=True))
            files.extend(path for path in found if path.endswith((".json", ".jsonl")))
        elif os.path.isfile(source):
            files.append(source)
        else:
            raise ChartWizFileNotFoundError(f"--gpt {source}: no such file or directory")
    return [os.path.abspath(path) for path in files]


def arrow_tables(arrow_files: list[str]) -> Iterator[pa.Table]:
    """Record batches of `datasets` Arrow files, streamed."""
    for path in arrow_files:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                yield pa.Table.from_batches([batch], schema=reader.schema)


def parquet_tables(parquet_files: list[str], batch_size: int = 256) -> Iterator[pa.Table]:
    """Record batches of Parquet files, streamed."""
    for path in parquet_files:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([batch], schema=parquet.schema_arrow)


def _content_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def write_parquet_shards(
    tables: Iterable[pa.Table], directory: str, split: str, name_by_content: bool = False
) -> list[str]:
    """
    Writes a split's tables as `<split>-0000i-of-0000n.parquet` (with `name_by_content`,
    `<split>-0000i-of-0000n-<sha256 prefix>.parquet`: shards of another content never take an existing shard's name).
    Rows point at the image files, stored once (`push_dataset` embeds them for the Hub). Shards are renamed into place
    only when complete.
    """
    os.makedirs(directory, exist_ok=True)
    pending, writer, rows = [], None, 0
    progress = tqdm(desc=f"Writing {os.path.basename(directory)}/{split} shards", unit=" rows")
    for table in tables:
        if writer is None or rows >= LOCAL_ROWS_PER_SHARD:
            if writer is not None:
                writer.close()
            pending.append(os.path.join(directory, f"{split}-{len(pending):05d}.parquet.partial"))
            writer, rows = pq.ParquetWriter(pending[-1], table.schema), 0
        writer.write_table(table)
        rows += table.num_rows
        progress.update(table.num_rows)
    progress.close()
    if writer is not None:
        writer.close()
    final = []
    for index, path in enumerate(pending):
        suffix = f"-{_content_hash(path)}" if name_by_content else ""
        target = os.path.join(directory, f"{split}-{index:05d}-of-{len(pending):05d}{suffix}.parquet")
        os.replace(path, target)
        final.append(target)
    return final


def _prepare_config(config: str, data_dir: str, gpt_files: list[str], work_dir: str, num_proc: Optional[int]):
    repeated_file = None
    if "gpt" in CONFIG_TASKS[config]:
        # Found here, over every file in order: each job of the builder reads a shard only.
        repeated_file = os.path.join(work_dir, "repeated_conversations.json")
        if not os.path.exists(repeated_file):
            with open(repeated_file, "w", encoding="utf-8") as file:
                json.dump(repeated_conversations(gpt_files), file, ensure_ascii=False)
    builder = ChartWizAIHub(
        config_name=config,
        data_dir=data_dir,
        gpt_files=tuple(gpt_files),
        report_dir=os.path.join(work_dir, "report"),
        cache_dir=os.path.join(work_dir, "cache"),
        repeated_file=repeated_file,
    )
    arrow_dir = os.path.join(work_dir, "arrow", config)
    builder.download_and_prepare(output_dir=arrow_dir, file_format="arrow", num_proc=num_proc)
    return arrow_dir


def _stage_shards(configs, splits, data_dir, gpt_files, work_dir, staging_dir, num_proc) -> dict:
    """Builds each config and writes its Parquet shards under `staging_dir`; returns {config: {split: [paths]}}."""
    shards = {}
    for config in configs:
        logger.info("Building %s from %s", config, data_dir)
        arrow_dir = _prepare_config(config, data_dir, gpt_files, work_dir, num_proc)
        shards[config] = {}
        for split in splits:
            arrow_files = sorted(glob.glob(os.path.join(arrow_dir, f"*-{split}*.arrow")))
            staged = write_parquet_shards(
                arrow_tables(arrow_files),
                os.path.join(staging_dir, config),
                split,
                name_by_content=True,
            )
            shards[config][split] = [os.path.relpath(path, staging_dir) for path in staged]
    return shards


@contextlib.contextmanager
def exclusive_build(output_dir: str) -> Iterator[None]:
    """Holds `output_dir`'s build lock, so two builds never write one folder; a second build fails at once."""
    lock = FileLock(os.path.join(output_dir, LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ChartWizOSError(
            f"{output_dir}: another build is writing into this folder (it holds {LOCK_NAME}); wait for it to "
            "finish or choose another --out."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _remove_stale_staging(output_dir: str) -> None:
    # Only called under the lock: a staging folder nobody holds is what a killed build left behind.
    for path in glob.glob(os.path.join(output_dir, f"{STAGING_PREFIX}*")):
        if os.path.isdir(path):
            logger.info("Removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """
    Holds SIGINT and SIGTERM back for the few renames that swap a build in, then delivers them: an interrupt
    leaves the old build or the new one, never half of each.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, frame: received.append(number)) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            # None: a handler not set from Python, which cannot be put back; the default is the closest.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)


def _requested_configs(configs: Iterable[str]) -> list[str]:
    """The configs to build, in the order given, once each; `all` brings in finetune and gpt."""
    configs = list(dict.fromkeys(configs))
    unknown = [name for name in configs if name not in (*BUILT_CONFIGS, "all")]
    if unknown:
        raise ChartWizValueError(f"Unknown configs {unknown}; choose from pretrain, finetune, gpt, all.")
    if "all" in configs:
        configs = [name for name in configs if name != "all"] + [n for n in ("finetune", "gpt") if n not in configs]
    return configs


def _stage_report_and_card(work_dir: str, report: dict, output_dir: str, configs: list[str], staging_dir: str):
    """Writes the report and the card beside the staged shards, to take the previous ones' place in the swap."""
    report_path = os.path.join(work_dir, REPORT_NAME)
    with open(report_path, "w", encoding="utf-8") as file:
        json.dump(report, file, ensure_ascii=False, indent=2)
    card_path = os.path.join(work_dir, "README.md")
    shard_paths = ShardPaths(output_dir, dict.fromkeys(configs, staging_dir))
    with open(card_path, "w", encoding="utf-8") as file:
        file.write(render_card(report, images_embedded=False, shard_paths=shard_paths))
    return report_path, card_path


def build_dataset(
    data_dir: str,
    output_dir: str,
    gpt_sources: Iterable[str] = (),
    configs: Iterable[str] = BUILT_CONFIGS,
    num_proc: Optional[int] = None,
    push_to_hub: Optional[str] = None,
    private: bool = False,
    max_shard_size: Optional[Union[int, str]] = None,
) -> dict:
    """
    Materializes the requested configs of an AI-Hub tree as Parquet shards under `output_dir/<config>/`, with a
    dataset card (`README.md`, whose `configs:` front matter makes `load_dataset(output_dir, config)` work; `all` is
    finetune + gpt) and `build_report.json`. Returns the report.

    Configs of an earlier build in `output_dir` that are not rebuilt are kept (shards, card entries and report
    counts), as long as that build read the same tree. The new build replaces the old one only once it is complete:
    an interrupted or failed build leaves the last good one, and a build whose configs wrote no row at all fails
    with the reasons (its report goes to `build_report.failed.json`). One build at a time writes a folder.

    Args:
        data_dir (`str`): the AI-Hub tree, holding `train/` and `test/`.
        output_dir (`str`): where the shards, card and report go.
        gpt_sources (`Iterable[str]`, defaults to `()`): GPT conversation files or folders, for `gpt` and `all`.
        configs (`Iterable[str]`, defaults to `("pretrain", "finetune", "gpt")`): the configs to build.
        num_proc (`int`, *optional*): processes per config (at least 1).
        push_to_hub (`str`, *optional*): also upload the build, images embedded, to this Hub dataset repo
            (`push_dataset`).
        private (`bool`, defaults to `False`): create that repo as private.
        max_shard_size (`int` or `str`, *optional*): the largest shard pushed (`"500MB"`, `datasets`' default).
    """
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ChartWizValueError(f"num_proc must be at least 1, got {num_proc!r}.")
    data_dir = os.path.abspath(data_dir)
    splits = check_tree(data_dir)
    configs = _requested_configs(configs)
    gpt_files = expand_gpt_sources(gpt_sources)
    if "gpt" in configs and not gpt_files:
        raise ChartWizValueError("The gpt config needs --gpt FILE_OR_DIR with the GPT conversations (JSON or JSONL).")
    if push_to_hub and max_shard_size is not None:
        shard_size_in_bytes(max_shard_size)  # a size that cannot be read stops the build before its work, not after
    os.makedirs(output_dir, exist_ok=True)

    with exclusive_build(output_dir):
        _remove_stale_staging(output_dir)
        previous = previous_build(output_dir)
        kept = kept_configs(previous, configs, data_dir, output_dir)
        with tempfile.TemporaryDirectory(dir=output_dir, prefix=STAGING_PREFIX) as work_dir:
            # Shards, report and card are staged here and replace the previous build only once all of them are
            # written and counted.
            staging_dir = os.path.join(work_dir, "parquet")
            shards = _stage_shards(configs, splits, data_dir, gpt_files, work_dir, staging_dir, num_proc)
            collected = collect_report(os.path.join(work_dir, "report"))
            built = checked_report(collected, shards, staging_dir, data_dir, gpt_files, splits)
            refuse_empty_build(built, output_dir, keeps_previous=previous is not None)
            built["warnings"] = empty_split_warnings(built)
            for warning in built["warnings"]:
                logger.warning("%s", warning["message"])
            report = merged_report(previous, built, kept)
            report_path, card_path = _stage_report_and_card(work_dir, report, output_dir, configs, staging_dir)
            with _interrupts_deferred():
                # Crash-consistent at every step, a SIGKILL included: the new shards come in beside the old ones
                # (their names hold their content's hash), the card that `load_dataset` reads switches from the old
                # set to the new one in one rename, and only then do the old shards go. Before the card's rename the
                # folder loads as the previous build, after it as this one; leftovers go with the next build.
                _swap_in(output_dir, staging_dir, configs)
                os.replace(report_path, os.path.join(output_dir, REPORT_NAME))
                os.replace(card_path, os.path.join(output_dir, "README.md"))
                _remove_unlisted_shards(output_dir, report)
        if os.path.exists(os.path.join(output_dir, FAILED_REPORT_NAME)):
            os.remove(os.path.join(output_dir, FAILED_REPORT_NAME))
        if push_to_hub:
            push_dataset(output_dir, push_to_hub, private=private, max_shard_size=max_shard_size)
    return report


def _swap_in(output_dir: str, staging_dir: str, configs: list[str]) -> None:
    """
    Moves the staged shards of `configs` into place beside their previous shards, which the card in place still
    names: a shard of the same name has the same content.
    """
    for config in configs:
        final_dir = os.path.join(output_dir, config)
        os.makedirs(final_dir, exist_ok=True)
        for path in sorted(glob.glob(os.path.join(staging_dir, config, "*.parquet"))):
            os.replace(path, os.path.join(final_dir, os.path.basename(path)))


def _remove_unlisted_shards(output_dir: str, report: dict) -> None:
    """Deletes the shards that `report` (the build the card names) does not list: older builds', killed ones'."""
    listed = {
        os.path.normpath(path)
        for by_split in report["counts"].values()
        for counts in by_split.values()
        for path in counts["files"]
    }
    for config in BUILT_CONFIGS:
        for path in glob.glob(os.path.join(output_dir, config, "*.parquet")):
            if os.path.normpath(os.path.relpath(path, output_dir)) not in listed:
                os.remove(path)


__all__ = [
    "arrow_tables",
    "build_dataset",
    "exclusive_build",
    "expand_gpt_sources",
    "parquet_tables",
    "push_dataset",
    "write_parquet_shards",
]
