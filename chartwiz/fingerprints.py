"""
What a result depends on, cheaply: fingerprints of checkpoints, files and settings, so that a job that resumes keeps
only the results that still belong to it.

A checkpoint's fingerprint never reads its weights: a weight file is known by its size, its modification time and a
hash of its safetensors header (tensor names, shapes and offsets), and a file of the Hugging Face cache by its blob
name, which is the Hub's hash of its content. Small files (configs, tokenizer, chat template, code) are hashed whole.
A 7B checkpoint is fingerprinted in milliseconds (docs/benchmarks.md).
"""

import hashlib
import json
import os
import struct
from typing import Any, Optional


# Where the training recipes record a run's settings and the fingerprint of the model it started from.
TRAINING_RUN_FILE = "chartwiz_run.json"
# Hashed whole below this size; above it a file is a weight file, known by size, mtime and header.
SMALL_FILE_BYTES = 16 << 20
# What a checkpoint folder holds besides what loading it reads: the model card and the trainer's records.
NOT_LOADED = frozenset(
    {
        "README.md",
        "training_args.bin",
        "trainer_state.json",
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        TRAINING_RUN_FILE,
    }
)
_CHUNK = 1 << 20


def digest(value: Any) -> str:
    """A short sha256 (16 hex digits) of a JSON-able value, keys sorted: what is stored beside a result."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _sha256_of_file(path: str, limit: Optional[int] = None) -> str:
    hasher, left = hashlib.sha256(), limit
    with open(path, "rb") as file:
        while left is None or left > 0:
            chunk = file.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            hasher.update(chunk)
            left = None if left is None else left - len(chunk)
    return hasher.hexdigest()


def _safetensors_header_sha256(path: str) -> Optional[str]:
    """sha256 of a safetensors file's header (8-byte length, then JSON), or None if it is not one."""
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        if length > os.fstat(file.fileno()).st_size - 8:
            return None
        return hashlib.sha256(prefix + file.read(length)).hexdigest()


def _hub_blob(path: str) -> Optional[str]:
    # huggingface_hub stores a snapshot's files as links to `blobs/<etag>`, the etag being the content's sha256 (or
    # git hash): the same file on every machine, however and whenever it was downloaded.
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    return os.path.basename(target) if os.path.basename(os.path.dirname(target)) == "blobs" else None


def file_fingerprint(path: str | os.PathLike) -> dict:
    """
    What identifies a file's content without reading all of it: the Hub blob it links to, or the sha256 of a small
    file, or the size, modification time and safetensors header (else the first megabyte) of a large one.
    """
    path = os.fspath(path)
    stat = os.stat(path)
    blob = _hub_blob(path)
    if blob is not None:
        return {"size": stat.st_size, "blob": blob}
    if stat.st_size <= SMALL_FILE_BYTES:
        return {"size": stat.st_size, "sha256": _sha256_of_file(path)}
    header = _safetensors_header_sha256(path) if path.endswith(".safetensors") else None
    fingerprint = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if header is not None:
        fingerprint["header_sha256"] = header
    else:
        fingerprint["head_sha256"] = _sha256_of_file(path, _CHUNK)
    return fingerprint


def _local_snapshot(name: str, revision: Optional[str]) -> Optional[str]:
    """The folder of a Hub repo's cached snapshot, without a network call; None where it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError

    try:
        return snapshot_download(name, revision=revision, local_files_only=True)
    except (OSError, ValueError, HFValidationError):
        return None


def checkpoint_fingerprint(name_or_path: str | os.PathLike, revision: Optional[str] = None) -> dict:
    """
    `{file name: file_fingerprint}` for the files of a checkpoint (or adapter) folder that loading it reads: every
    file at its top level but the model card, the trainer's records and hidden files. A Hub repo is fingerprinted by
    its cached snapshot (after loading it, so the files are there), else by its name and revision.
    """
    name = os.fspath(name_or_path)
    folder = name if os.path.isdir(name) else _local_snapshot(name, revision)
    if folder is None:
        return {"repo": name, "revision": revision}
    return {
        entry.name: file_fingerprint(entry.path)
        for entry in sorted(os.scandir(folder), key=lambda entry: entry.name)
        if entry.is_file() and not entry.name.startswith(".") and entry.name not in NOT_LOADED
    }


def model_fingerprints(
    model_name_or_path: Optional[str], adapter: Optional[str] = None, revision: Optional[str] = None
) -> dict:
    """`{"model": ..., "adapter": ...}`: the checkpoint fingerprints of a model and of the adapter applied to it."""
    return {
        "model": checkpoint_fingerprint(model_name_or_path, revision) if model_name_or_path else None,
        "adapter": checkpoint_fingerprint(adapter) if adapter else None,
    }


def tree_fingerprint(path: str | os.PathLike) -> dict:
    """
    `{relative path: [size, mtime_ns]}` of every file under `path` (hidden ones left out, such as locks), or `{}` if
    it does not exist: whether what a finished step wrote is still there as it was left.
    """
    root = os.fspath(path)
    found = {}
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(folder, name)
            stat = os.stat(full)
            found[os.path.relpath(full, root)] = [stat.st_size, stat.st_mtime_ns]
    return found


def changed_files(before: dict, after: dict) -> list[str]:
    """The names whose fingerprints differ between two `checkpoint_fingerprint`s (or trees), added and removed too."""
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def describe_changes(before: dict, after: dict, limit: int = 3) -> str:
    """`model.safetensors, tokenizer.json and 2 more`: the files that changed, for messages."""
    changed = changed_files(before, after)
    shown = ", ".join(changed[:limit])
    return shown + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


class ContentDigests:
    """sha256 of files' bytes, remembered per (path, size, mtime): a file that rows share is read once."""

    def __init__(self):
        self._known: dict[tuple, str] = {}

    def of_file(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = _sha256_of_file(path)
        return self._known[key]

    @staticmethod
    def of_bytes(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


__all__ = [
    "TRAINING_RUN_FILE",
    "ContentDigests",
    "changed_files",
    "checkpoint_fingerprint",
    "describe_changes",
    "digest",
    "file_fingerprint",
    "model_fingerprints",
    "tree_fingerprint",
]
