"""
The engines `chartwiz infer` and `chartwiz evaluate` generate with: the interface `run_inference` drives, and the
transformers engine (`generate` on a model in this process, its inputs prepared ahead of it in a background thread).
The vLLM engine is `chartwiz.serving.engine.VLLMEngine`; `chartwiz.batch.run.load_inference_engine`
chooses between the two.
"""

import copy
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from chartwiz.names import DEFAULT_BATCH_SIZE

from .generation import generate_answers
from .loading import load_chartwiz
from .prompts import ContextLengthError, prepare_inputs, prompt_length


class InferenceEngine:
    """
    What `run_inference` generates with: `answer` takes the jobs of a pass (questions with their context, checked to
    fit the context) and yields, as answers come, `(errors, answered)`: `(question, kind, reason)` triples and
    `(job, chart type or None, answer)` triples. `config` is the model's config, `name_or_path` where it was loaded
    from, `wait_seconds` the time generation waited for inputs.
    """

    config = None
    name_or_path = None
    wait_seconds = 0.0

    def answer(self, jobs: Sequence, load_image: Callable, max_new_tokens: int, **generate_kwargs):
        raise NotImplementedError

    # How `run_inference` sizes and fingerprints the prompts; a ChartWiz prompt by default, whose chart takes a fixed
    # number of tokens.

    def prompt_length(self, processor, question: str, history) -> int:
        """The prompt's length in tokens (a lower bound where the chart's own count is known only with the chart)."""
        return prompt_length(processor, question, history)

    def image_tokens(self, processor) -> Optional[int]:
        """How many of `prompt_length`'s tokens are the chart's; `None` where they are not counted in it."""
        return processor.image_seq_length

    def prompt_settings(self, processor) -> dict:
        """What the prompts depend on besides the questions, a part of each answer's fingerprint."""
        return {
            "image_tokens": processor.image_seq_length,
            "chat_template_sha256": hashlib.sha256((processor.chat_template or "").encode("utf-8")).hexdigest(),
        }

    def close(self) -> None:
        """Frees what the engine holds (processes, devices); nothing to do for a model in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@dataclass
class _Prepared:
    jobs: list  # the jobs whose inputs are in `inputs`, in order
    chart_types: list
    inputs: Any
    errors: list  # [(question, kind, reason)]


def serving_dtype(device=None, dtype=None) -> tuple[Any, dict]:
    """
    The dtype and placement to load a model for answering with: bf16 (fp16 where bf16 is not supported) spread over
    the GPUs with `device_map="auto"` where there is a GPU and no `device` is given; the checkpoint's own dtype on
    CPU; `dtype` (a torch dtype's name, or `"auto"`) where given.
    """
    import torch

    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if dtype is None and cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dtype in (None, "auto"):
        dtype = "auto"
    else:
        dtype = getattr(torch, dtype)
    return dtype, {"device_map": "auto"} if cuda and device is None else {}


def load_model_for_inference(model_path: str, adapter=None, device=None, dtype=None):
    """`load_chartwiz` with serving defaults (`serving_dtype`)."""
    dtype, kwargs = serving_dtype(device, dtype)
    return load_chartwiz(model_path, device=device, dtype=dtype, adapter=adapter, **kwargs)


def _prepare(processor, load_image: Callable, jobs: list, build_inputs: Optional[Callable] = None) -> _Prepared:
    """
    Loads and processes a batch's images and prompts (CPU work); a job that fails is set aside with its reason.
    `build_inputs(processor, images, questions, histories)` makes the inputs, ChartWiz's `prepare_inputs` by default.
    """
    build_inputs = build_inputs or prepare_inputs
    good, images, chart_types, errors = [], [], [], []
    for job in jobs:
        try:
            image, chart_type = load_image(job.question)
        except (OSError, ValueError) as error:
            errors.append((job.question, "image", str(error)))
            continue
        good.append(job)
        images.append(image)
        chart_types.append(chart_type)
    if not good:
        return _Prepared([], [], None, errors)

    def inputs_of(selected, selected_images):
        questions = [job.question.question for job in selected]
        return build_inputs(processor, selected_images, questions, [job.history for job in selected])

    try:
        return _Prepared(good, chart_types, inputs_of(good, images), errors)
    except ValueError:
        # Find the culprit(s) one by one so that the rest of the batch is still answered.
        kept, kept_images, kept_types = [], [], []
        for job, image, chart_type in zip(good, images, chart_types):
            try:
                inputs_of([job], [image])
            except ValueError as error:
                kind = "too long" if isinstance(error, ContextLengthError) else "inputs"
                errors.append((job.question, kind, str(error)))
                continue
            kept.append(job)
            kept_images.append(image)
            kept_types.append(chart_type)
        inputs = inputs_of(kept, kept_images) if kept else None
        return _Prepared(kept, kept_types, inputs, errors)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def use_background_worker(model) -> bool:
    """
    Whether preparing images in a background thread pays: yes where the model runs on an accelerator, whose host CPU
    is idle meanwhile; on the CPU only where there are cores that torch does not use, since the worker otherwise
    takes them from the model (measured in docs/benchmarks.md).
    """
    import torch

    return model.device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


def _prepared_batches(
    processor, load_image, batches, background: bool, prefetch: int, timer: list, cpu: bool, build_inputs=None
):
    """
    The prepared batches in order (`_prepare`, with `build_inputs`). With `background`, a thread prepares up to
    `prefetch` batches ahead of the model (PIL, numpy and the tokenizer release the GIL for most of that work).
    `timer[0]` accumulates the time the caller waited for a batch. `cpu` says the model runs on the CPU.
    """
    if not background:
        for jobs in batches:
            start = time.perf_counter()
            prepared = _prepare(processor, load_image, jobs, build_inputs)
            timer[0] += time.perf_counter() - start
            yield prepared
        return

    ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    # A fast tokenizer is one Rust object: padding a batch here while the model's thread decodes the last one fails
    # with "Already borrowed", so the worker gets its own copy.
    processor = copy.deepcopy(processor)
    if cpu and hasattr(processor.image_processor, "num_workers"):
        # The cores belong to the model: more image threads beside it only make both wait for each other.
        processor.image_processor.num_workers = 1

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for jobs in batches:
                if not put(_prepare(processor, load_image, jobs, build_inputs)):
                    return
        except BaseException as error:  # noqa: B036 - handed to the consuming thread, which raises it
            put(_Failure(error))
            return
        put(None)

    worker = threading.Thread(target=work, name="chartwiz-prepare", daemon=True)
    worker.start()
    try:
        while True:
            start = time.perf_counter()
            item = ready.get()
            timer[0] += time.perf_counter() - start
            if item is None:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


class TransformersEngine(InferenceEngine):
    """
    `generate` on a loaded model, `batch_size` questions at a time in left-padded batches, their images and inputs
    prepared ahead of the model in a background thread where that pays (`use_background_worker`).
    """

    def __init__(
        self,
        model,
        processor,
        batch_size: int = DEFAULT_BATCH_SIZE,
        background: Optional[bool] = None,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model, self.processor = model, processor
        self.config, self.name_or_path = model.config, getattr(model, "name_or_path", None)
        self.batch_size, self.prefetch = batch_size, prefetch
        self.background = use_background_worker(model) if background is None else background

    def answer(self, jobs: Sequence, load_image: Callable, max_new_tokens: int, **generate_kwargs):
        batches = [jobs[start : start + self.batch_size] for start in range(0, len(jobs), self.batch_size)]
        timer = [0.0]
        on_cpu = self.model.device.type == "cpu"
        prepared_batches = _prepared_batches(
            self.processor,
            load_image,
            batches,
            self.background,
            self.prefetch,
            timer,
            on_cpu,
            self.input_builder(max_new_tokens),
        )
        try:
            for prepared in prepared_batches:
                if not prepared.jobs:
                    yield prepared.errors, []
                    continue
                texts = self.generate(prepared.inputs, max_new_tokens, **generate_kwargs)
                yield prepared.errors, list(zip(prepared.jobs, prepared.chart_types, texts))
        finally:
            self.wait_seconds += timer[0]

    def input_builder(self, max_new_tokens: int) -> Optional[Callable]:
        """
        `(processor, images, questions, histories) -> inputs` for batches of answers of at most `max_new_tokens`,
        run where the batch is prepared, with that thread's own copy of the processor; `None`: ChartWiz's
        `prepare_inputs`.
        """
        return None

    def generate(self, inputs, max_new_tokens: int, **generate_kwargs) -> list[str]:
        """The answers to a prepared batch."""
        return generate_answers(self.model, self.processor, inputs, max_new_tokens, **generate_kwargs)


__all__ = [
    "InferenceEngine",
    "TransformersEngine",
    "load_model_for_inference",
    "serving_dtype",
    "use_background_worker",
]
