"""Joining the answers files of the shards of one `chartwiz infer` run (`--num-chunks`) into one: `--merge`."""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from .errors import ChartWizFileNotFoundError, ChartWizValueError
from .files import write_json_atomic
from .questions import Question
from .run_store import changed_settings, output_paths, read_json, read_jsonl, row_key, write_jsonl_atomic


logger = logging.getLogger(__name__)


@dataclass
class MergeSummary:
    """What `merge_shards` wrote: answers and errors, the input's questions in neither, the shards in chunk order."""

    answers: int
    errors: int
    missing: list  # keys of input questions in no shard's answers or errors
    shards: list


def merge_shards(shard_paths: Sequence[str], output_path: str, questions: Optional[Sequence[Question]] = None):
    """
    Joins the answers (and errors) files of shards `0..N-1` of one run into `output_path`: the shards must come
    from the same settings, each chunk once, no (id, turn) twice. With `questions` (the run's whole input), the
    answers are written in the input's order and the questions that no shard answered or rejected are reported.
    """
    shard_paths = list(dict.fromkeys(shard_paths))
    if os.path.abspath(output_path) in {os.path.abspath(path) for path in shard_paths}:
        raise ChartWizValueError(f"{output_path} is one of the shards; merge into another file")
    metas, fingerprints = [], None
    for path in shard_paths:
        _, meta_path = output_paths(path)
        meta = read_json(meta_path)
        if meta is None:
            raise ChartWizFileNotFoundError(
                f"{path}: no settings file {meta_path}; is it an answers file of chartwiz infer?"
            )
        metas.append(meta["settings"])
        fingerprints = fingerprints or meta.get("fingerprints")
    common = {name: value for name, value in metas[0].items() if name != "chunk_idx"}
    for path, meta in zip(shard_paths, metas):
        differing = changed_settings(common, {name: value for name, value in meta.items() if name != "chunk_idx"})
        if differing:
            differences = "; ".join(
                f"{name}: {common.get(name)!r} there, {meta.get(name)!r} here" for name in differing
            )
            raise ChartWizValueError(
                f"{path} was made with other settings than {shard_paths[0]} ({differences}); only shards of one run "
                "merge"
            )
    num_chunks = common.get("num_chunks", 1)
    by_chunk = {}
    for path, meta in zip(shard_paths, metas):
        chunk = meta.get("chunk_idx", 0)
        if chunk in by_chunk:
            raise ChartWizValueError(f"{path} and {by_chunk[chunk]} are both chunk {chunk}")
        by_chunk[chunk] = path
    absent = sorted(set(range(num_chunks)) - set(by_chunk))
    if absent:
        logger.warning("chunks %s of %d are not among the files to merge", absent, num_chunks)

    answers, errors, origin = {}, {}, {}
    for chunk in sorted(by_chunk):
        path = by_chunk[chunk]
        errors_path, _ = output_paths(path)
        for target, rows in ((answers, read_jsonl(path)), (errors, read_jsonl(errors_path))):
            for row in rows:
                key = row_key(row)
                if key in answers or key in errors:
                    raise ChartWizValueError(f"id {key[0]!r} turn {key[1]} is in both {origin[key]} and {path}")
                target[key], origin[key] = row, path

    order = {question.key: position for position, question in enumerate(questions or ())}
    missing = [
        question.key for question in questions or () if question.key not in answers and question.key not in errors
    ]
    output_errors, output_meta = output_paths(output_path)
    for target, rows in ((output_path, answers), (output_errors, errors)):
        keys = sorted(rows, key=lambda key: order.get(key, len(order))) if order else list(rows)
        write_jsonl_atomic(target, [rows[key] for key in keys])
    # The merged file is a run of the whole input: rerunning that (one chunk) with it as --answers fills the gaps.
    write_json_atomic(
        output_meta,
        {
            "settings": {**common, "num_chunks": 1, "chunk_idx": 0},
            "info": {"merged_from": [by_chunk[c] for c in sorted(by_chunk)]},
            "fingerprints": fingerprints,
        },
    )
    return MergeSummary(len(answers), len(errors), missing, [by_chunk[chunk] for chunk in sorted(by_chunk)])


__all__ = ["MergeSummary", "merge_shards"]
