"""Joining the answers files of the shards of one `chartwiz infer` run (`--num-chunks`) into one: `--merge`."""

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizValueError
from chartwiz.files import write_json_atomic
from chartwiz.fingerprints import digest

from .questions import Question
from .run_store import (
    changed_settings,
    describe_run_change,
    output_paths,
    question_fingerprint,
    read_json,
    read_jsonl,
    row_key,
    stale_reason,
    write_jsonl_atomic,
)


logger = logging.getLogger(__name__)


@dataclass
class MergeSummary:
    """
    What `merge_shards` wrote: answers and errors, the input's questions in neither (among them those whose answer
    no longer holds), the shards in chunk order, and `{reason: count}` of the shards' rows left out.
    """

    answers: int
    errors: int
    missing: list  # keys of input questions in no shard's answers or errors
    shards: list
    left_out: dict = field(default_factory=dict)


def _check_one_run(shard_paths: list[str], metas: list[dict]) -> dict:
    """
    The settings and fingerprints the shards share, once each shard is found to have been made by the same command
    but for its chunk: same settings, and the same model, adapter and generation settings by their fingerprints
    (another model at the same path is another run). Raises `ChartWizValueError` saying what differs.
    """
    first, first_meta = shard_paths[0], metas[0]
    common = {name: value for name, value in first_meta["settings"].items() if name != "chunk_idx"}
    fingerprints = first_meta.get("fingerprints")
    for path, meta in zip(shard_paths[1:], metas[1:]):
        settings = {name: value for name, value in meta["settings"].items() if name != "chunk_idx"}
        differing = changed_settings(common, settings)
        if differing:
            differences = "; ".join(
                f"{name}: {common.get(name)!r} there, {settings.get(name)!r} here" for name in differing
            )
            raise ChartWizValueError(
                f"{path} was made with other settings than {first} ({differences}); only shards of one run merge"
            )
        if digest(meta.get("fingerprints")) != digest(fingerprints):
            change = describe_run_change(fingerprints, meta.get("fingerprints") or {})
            raise ChartWizValueError(
                f"{path} was answered by another model or generation than {first}, though with the same settings: "
                f"{change}. Only shards of one run merge: answer the shards again with one model."
            )
    return {"settings": common, "fingerprints": fingerprints}


def merge_shards(
    shard_paths: Sequence[str],
    output_path: str,
    questions: Optional[Sequence[Question]] = None,
    load_image: Optional[Callable] = None,
) -> MergeSummary:
    """
    Joins the answers (and errors) files of shards `0..N-1` of one run into `output_path`: the shards must come
    from the same settings and the same model files (by their fingerprints), each chunk once, no (id, turn) twice.
    With `questions` (the run's whole input, as it is now) and its `load_image`, every row is checked against it as a
    resumed run checks its own (`stale_reason`): the rows of questions no longer in the input, and those whose
    question, context or image changed since they were answered, are left out (and counted in `left_out`); the
    answers are written in the input's order, and the questions that no shard holds an answer or error for, the
    changed ones among them, are reported as `missing`.
    """
    shard_paths = list(dict.fromkeys(shard_paths))
    if os.path.abspath(output_path) in {os.path.abspath(path) for path in shard_paths}:
        raise ChartWizValueError(f"{output_path} is one of the shards; merge into another file")
    metas = []
    for path in shard_paths:
        _, meta_path = output_paths(path)
        meta = read_json(meta_path)
        if meta is None:
            raise ChartWizFileNotFoundError(
                f"{path}: no settings file {meta_path}; is it an answers file of chartwiz infer?"
            )
        metas.append(meta)
    run = _check_one_run(shard_paths, metas)
    common, fingerprints = run["settings"], run["fingerprints"]
    num_chunks = common.get("num_chunks", 1)
    by_chunk = {}
    for path, meta in zip(shard_paths, metas):
        chunk = meta["settings"].get("chunk_idx", 0)
        if chunk in by_chunk:
            raise ChartWizValueError(f"{path} and {by_chunk[chunk]} are both chunk {chunk}")
        by_chunk[chunk] = path
    absent = sorted(set(range(num_chunks)) - set(by_chunk))
    if absent:
        logger.warning("chunks %s of %d are not among the files to merge", absent, num_chunks)

    run_key = digest(fingerprints)
    question_keys = None
    if questions is not None:
        question_keys = {question.key: question_fingerprint(question, load_image) for question in questions}
    answers, errors, origin, left_out = {}, {}, {}, {}
    for chunk in sorted(by_chunk):
        path = by_chunk[chunk]
        errors_path, _ = output_paths(path)
        for target, rows in ((answers, read_jsonl(path)), (errors, read_jsonl(errors_path))):
            for row in rows:
                key = row_key(row)
                if key in answers or key in errors:
                    raise ChartWizValueError(f"id {key[0]!r} turn {key[1]} is in both {origin[key]} and {path}")
                keys = question_keys if question_keys is not None else {key: row_question(row)}
                reason = stale_reason(row, run_key, keys, "made by another run than its shard's settings file says")
                if reason is not None:
                    left_out[reason] = left_out.get(reason, 0) + 1
                    continue
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
    shards = [by_chunk[chunk] for chunk in sorted(by_chunk)]
    return MergeSummary(len(answers), len(errors), missing, shards, left_out)


def row_question(row: dict) -> Optional[str]:
    """The question fingerprint a row was written with, to check a row against its run alone (no input at hand)."""
    stored = row.get("fingerprint")
    return stored.get("question") if isinstance(stored, dict) else None


__all__ = ["MergeSummary", "merge_shards"]
