"""Fingerprints: what identifies a checkpoint's files without reading its weights."""

import os
import struct

import torch
from safetensors.torch import save_file

from chartwiz.fingerprints import (
    SMALL_FILE_BYTES,
    changed_files,
    checkpoint_fingerprint,
    describe_changes,
    file_fingerprint,
    tree_fingerprint,
)


def weights_file(path, fill: float = 0.0):
    # Above the size that is hashed whole: a weight file, known by size, mtime and header.
    rows = SMALL_FILE_BYTES // (4 * 1024) + 16
    save_file({"weight": torch.full((rows, 1024), fill)}, str(path))


def test_weights_are_known_by_size_mtime_and_header_not_by_their_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    weights_file(path)
    before = file_fingerprint(path)
    assert set(before) == {"size", "mtime_ns", "header_sha256"}
    stat = os.stat(path)
    # Bytes changed in place with the mtime put back are not read (a fingerprint must stay cheap for 7B weights)...
    with open(path, "r+b") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(8 + length + 100)
        file.write(b"\x01\x02\x03\x04")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_fingerprint(path) == before
    # ...but a file written again (new mtime) or with other tensors (new header) is another file.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_fingerprint(path) != before
    save_file({"other": torch.zeros(SMALL_FILE_BYTES // 4 + 4096)}, str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_fingerprint(path)["header_sha256"] != before["header_sha256"]


def test_a_checkpoint_is_the_files_loading_reads(tmp_path, tiny_dir):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    before = checkpoint_fingerprint(folder)
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_chartwiz.py"} <= set(before)
    # The model card, the trainer's records, hidden files and sub-folders (checkpoints) do not change what loads.
    (folder / "README.md").write_text("# card", encoding="utf-8")
    (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
    (folder / ".lock").write_text("", encoding="utf-8")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    assert checkpoint_fingerprint(folder) == before
    config = (folder / "config.json").read_text(encoding="utf-8")
    (folder / "config.json").write_text(config.replace('"use_cache": true', '"use_cache": false'), encoding="utf-8")
    (folder / "added_tokens.json").write_text("{}", encoding="utf-8")
    after = checkpoint_fingerprint(folder)
    assert changed_files(before, after) == ["added_tokens.json", "config.json"]
    assert describe_changes(before, after, limit=1) == "added_tokens.json and 1 more"


def test_files_of_the_hub_cache_are_known_by_their_blob(tmp_path):
    # huggingface_hub's layout: snapshots/<commit>/<file> -> ../../blobs/<etag>, the etag being the content's hash.
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    weights_file(blobs / "9f86d081884c7d65")
    os.symlink(os.path.join("..", "..", "blobs", "9f86d081884c7d65"), snapshot / "model.safetensors")
    fingerprint = file_fingerprint(snapshot / "model.safetensors")
    assert fingerprint["blob"] == "9f86d081884c7d65" and "mtime_ns" not in fingerprint
    os.utime(blobs / "9f86d081884c7d65")  # downloaded at another time, on another machine: the same file
    assert file_fingerprint(snapshot / "model.safetensors") == fingerprint
    assert checkpoint_fingerprint("no-such/repo") == {"repo": "no-such/repo", "revision": None}


def test_a_tree_fingerprint_sees_every_file_but_hidden_ones(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.txt").write_text("1")
    (tmp_path / ".build.lock").write_text("")
    before = tree_fingerprint(tmp_path)
    assert list(before) == [os.path.join("a", "b", "c.txt")]
    (tmp_path / ".build.lock").write_text("held")
    assert tree_fingerprint(tmp_path) == before
    (tmp_path / "a" / "b" / "c.txt").write_text("22")
    assert tree_fingerprint(tmp_path) != before
    assert tree_fingerprint(tmp_path / "nowhere") == {}
