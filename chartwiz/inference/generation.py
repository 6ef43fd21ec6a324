"""Answering questions about charts with a loaded ChartWiz model, one at a time or in left-padded batches."""

import logging
import os
import re
from collections.abc import Sequence
from typing import Optional

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from chartwiz.errors import ChartWizOSError, ChartWizValueError
from chartwiz.names import IMAGE_TOKEN

from .images import load_chart_image


# How every entry point asks the processor for a question's prompt: the chat template's, ending with the assistant's
# turn, and the users' special-token strings as plain text. Not `verbose`: the tokenizer's warning that a prompt is
# longer than the model's maximum would come before the context check every entry point makes (`fit_in_context`),
# whose error says the same in ChartWiz's words and what to do.
USER_TEXT_KWARGS = {"add_generation_prompt": True, "split_special_tokens_in_messages": True, "verbose": False}


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        # What bytes that are not UTF-8 become on a command line (surrogateescape); the tokenizer cannot take them.
        raise ChartWizValueError(
            f"The {what} is not valid text: a lone surrogate (U+{ord(text[error.start]):04X}) at character "
            f"{error.start}, as bytes that are not UTF-8 become; pass it as UTF-8."
        ) from None


def check_question(question: str, image_token: str = IMAGE_TOKEN) -> str:
    """
    The question without surrounding whitespace. Raises `ValueError` if nothing is asked, if the text is not valid
    Unicode (a lone surrogate), or if it contains the image placeholder, which only the prompt's template may write.
    """
    if not isinstance(question, str) or not question.strip():
        raise ChartWizValueError("The question is empty: ask something about the chart, e.g. '가장 큰 값은?'.")
    _check_text(question, "question")
    if image_token in question:
        raise ChartWizValueError(
            f"The question contains {image_token}, which marks where the chart goes in the prompt; the chart is put "
            f"there for you, so leave {image_token} out of the question."
        )
    return question.strip()


def chat_messages(question: str, history: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """
    The conversation of a question about one chart: the earlier `(question, answer)` turns first, the chart in the
    first user turn (as the training data has it), and `question` last.
    """
    messages = []
    for asked, answered in [*history, (question, None)]:
        content = [{"type": "text", "text": check_question(asked)}]
        if not messages:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        if answered is not None:
            _check_text(answered, "answer in the history")
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    return messages


def build_prompt(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The chat-template prompt of a question about one chart (after `history`), ending with the assistant's turn."""
    return processor.apply_chat_template(chat_messages(question, history), add_generation_prompt=True)


def encode_prompt(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
    """
    The token ids of `build_prompt(processor, question, history)`, with one `<image>` id where the chart goes (what
    vLLM takes): the processor's, with special-token strings in the questions and answers kept plain text (its
    `split_special_tokens_in_messages`).

    Role words are another matter: "ASSISTANT:" written in a question is plain text, and so are the roles of the
    templates ChartWiz ships (`synatra_mini`, `vicuna_v1`), so the model reads both the same way; no tokenization can
    tell them apart, and filtering such words out of questions would change what users asked.
    """
    conversation = chat_messages(question, history)
    return processor(text=[conversation], **USER_TEXT_KWARGS)["input_ids"][0]


def prompt_length(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> int:
    """
    The length in tokens of the prompt `prepare_inputs` gives the model for `question` (after `history`), without
    padding: `encode_prompt`'s ids with the `<image>` expanded to one token per patch. Raises `ValueError` as
    `encode_prompt` does.
    """
    return len(encode_prompt(processor, question, history)) + processor.image_seq_length - 1


def prepare_inputs(
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    histories: Optional[Sequence[Sequence[tuple[str, str]]]] = None,
) -> BatchFeature:
    """
    The model inputs of `questions[i]` about `images[i]` (after `histories[i]`) as one left-padded batch: the
    processor's, with special-token strings in users' text kept plain text. CPU work only, so it can run ahead of
    the model in another thread.
    """
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images for {len(questions)} questions.")
    histories = histories if histories is not None else [()] * len(questions)
    if len(histories) != len(questions):
        raise ValueError(f"Got {len(histories)} histories for {len(questions)} questions.")
    conversations = [chat_messages(question, history) for question, history in zip(questions, histories)]
    return processor(
        images=list(images),
        text=conversations,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        **USER_TEXT_KWARGS,
    )


def context_length(config) -> Optional[int]:
    """The language model's context in tokens (its `max_position_embeddings`), `None` where the config has none."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


class ContextLengthError(ChartWizValueError):
    """
    A prompt and the new tokens asked for that do not fit in the language model's context (see `fit_in_context`);
    the numbers are attributes, for callers that report them their own way.
    """

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int, image_tokens: Optional[int] = None):
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context
        self.image_tokens = image_tokens
        room = context - prompt_tokens
        if room < 1:
            chart = f" ({image_tokens} of them the chart's)" if image_tokens else ""
            message = (
                f"The prompt is {prompt_tokens} tokens{chart}, which leaves no room in the language model's context "
                f"of {context} tokens: shorten the question or the history."
            )
        else:
            message = (
                f"The prompt is {prompt_tokens} tokens, so {max_new_tokens} new tokens would run past the language "
                f"model's context of {context} tokens: ask for at most {room} new tokens, or shorten the question."
            )
        super().__init__(message)


def fit_in_context(
    prompt_tokens: int,
    max_new_tokens: int,
    context: Optional[int],
    image_tokens: Optional[int] = None,
    clamp: bool = False,
) -> int:
    """
    The context check of every entry point (`ask`, `infer`, `evaluate`, the demo), before anything is generated:
    the number of new tokens to generate after a prompt of `prompt_tokens` tokens.

    Args:
        prompt_tokens (`int`):
            The prompt's length (padding included for a batch), what the cache holds before the first new token.
        max_new_tokens (`int`):
            The number of new tokens asked for.
        context (`int`, *optional*):
            The language model's context (`context_length(config)`); no check without it.
        image_tokens (`int`, *optional*):
            How many of the prompt's tokens are the chart's, for the message.
        clamp (`bool`, *optional*, defaults to `False`):
            Return the number that fits instead of raising when `max_new_tokens` does not.

    Raises:
        `ContextLengthError` (a `ValueError`), with the numbers, if the prompt leaves no room at all, or (unless
        `clamp`) if `max_new_tokens` do not fit.
    """
    if max_new_tokens < 1:
        raise ChartWizValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if context is None:
        return max_new_tokens
    room = context - prompt_tokens
    if room < 1 or (max_new_tokens > room and not clamp):
        raise ContextLengthError(prompt_tokens, max_new_tokens, context, image_tokens)
    return min(max_new_tokens, room)


def fit_new_tokens(inputs: BatchFeature, config, max_new_tokens: int, clamp: bool = False) -> int:
    """
    `fit_in_context` for a batch from `prepare_inputs` and the model's `config`: the number of new tokens to
    generate after its (padded) prompts. Raises as `fit_in_context` does.
    """
    image_tokens = inputs["pixel_values"].shape[1] if "pixel_values" in inputs else None
    return fit_in_context(inputs["input_ids"].shape[1], max_new_tokens, context_length(config), image_tokens, clamp)


def suppressed_tokens(generation_config, image_token_id: int) -> list[int]:
    """
    The tokens an answer never holds: the generation config's `suppress_tokens` and the image placeholder, which
    checkpoints made before it was written there do not list.
    """
    suppressed = list(getattr(generation_config, "suppress_tokens", None) or [])
    return suppressed if image_token_id in suppressed else [*suppressed, image_token_id]


@torch.inference_mode()
def generate_answers(
    model, processor, inputs: BatchFeature, max_new_tokens: int = 256, streamer=None, **generate_kwargs
) -> list[str]:
    """
    Greedy (unless told otherwise) answers for a batch from `prepare_inputs`. Raises `ValueError` before generating
    if `max_new_tokens` do not fit in the context after the prompts (see `fit_new_tokens`).
    """
    fit_new_tokens(inputs, model.config, max_new_tokens)
    inputs = inputs.to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("suppress_tokens", suppressed_tokens(model.generation_config, processor.image_token_id))
    output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    new_tokens = output_ids[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_questions(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    histories: Optional[Sequence[Sequence[tuple[str, str]]]] = None,
    max_new_tokens: int = 256,
    streamer=None,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers to `questions[i]` about `images[i]`, generated together as one left-padded batch."""
    inputs = prepare_inputs(processor, images, questions, histories)
    return generate_answers(model, processor, inputs, max_new_tokens, streamer=streamer, **generate_kwargs)


def check_device(device: Optional[str | torch.device]) -> Optional[torch.device]:
    """
    `device` as a `torch.device`, after checking that this machine has it; `None` stays `None`. Raises `ValueError`
    for a string torch does not read as a device, a device type torch cannot use here (`cuda` without CUDA), or an
    index past the devices present.
    """
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ChartWizValueError(
            f"Unknown device {device!r}: use cpu, cuda, cuda:N (or mps, xpu where present)."
        ) from None
    if parsed.type == "cpu":
        return parsed
    # torch.cuda, torch.mps, torch.xpu...: each device type a model can run on has a module that says if it is here
    backend = getattr(torch, parsed.type, None)
    if not callable(getattr(backend, "is_available", None)):
        raise ChartWizValueError(f"Device {device!r} is not one to run a model on: use cpu or cuda.")
    if not backend.is_available():
        raise ChartWizValueError(
            f"Device {device!r} is not available: torch {torch.__version__} finds no {parsed.type} here."
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise ChartWizValueError(
            f"Device {device!r} does not exist: this machine has {count} {parsed.type} device(s)."
        )
    return parsed


def check_checkpoint(model_name_or_path: str | os.PathLike, **kwargs) -> None:
    """
    Checks that `model_name_or_path` is a ChartWiz checkpoint (a local directory or a Hub repo) before anything is
    loaded, with a one-line error for a path that does not exist, a directory without `config.json`, another kind of
    model, or a config without its vision and text parts. `kwargs`: the Hub arguments of `from_pretrained`.
    """
    from chartwiz.checkpoints import describe_model_type, read_config_dict
    from chartwiz_hf.configuration_chartwiz import ChartWizConfig

    name = os.fspath(model_name_or_path)
    config_dict = read_config_dict(name, **kwargs)
    if config_dict.get("model_type") != ChartWizConfig.model_type:
        raise ChartWizValueError(
            f"{name} holds {describe_model_type(config_dict)}, not a ChartWiz model (model_type 'chartwiz'); build "
            "one with `chartwiz compose`, or a tiny one with `chartwiz init-tiny`."
        )
    try:
        ChartWizConfig.from_dict(dict(config_dict))
    except (ValueError, TypeError) as error:
        raise ChartWizValueError(f"{name}: {error}") from None


def load_chartwiz(
    model_name_or_path: str, device: Optional[str] = None, dtype="auto", adapter: Optional[str] = None, **kwargs
):
    """
    Model and processor from a local directory or the Hub, through the Auto classes; with `adapter`, a PEFT (LoRA)
    adapter folder is applied on top without merging. The device and the checkpoint are checked first
    (`check_device`, `check_checkpoint`), weights that cannot be read are reported as such, and weights missing from
    the checkpoint, unexpected or of another shape are refused (`from_pretrained_complete`), so a wrong input gives
    a one-line `ValueError` or `OSError` rather than a traceback, a download attempt or random weights.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText

    from chartwiz.checkpoints import from_pretrained_complete

    device = check_device(device)
    check_checkpoint(model_name_or_path, **kwargs)
    try:
        model = from_pretrained_complete(AutoModelForImageTextToText, model_name_or_path, dtype=dtype, **kwargs)
    except SafetensorError as error:
        raise ChartWizOSError(
            f"{model_name_or_path}: cannot read the weights ({error}); the safetensors file is truncated or corrupt, "
            "save or download it again."
        ) from None
    if adapter is not None:
        model = load_adapter(model, adapter, os.fspath(model_name_or_path))
    if device is not None:
        model = model.to(device)
    return model.eval(), load_processor(model_name_or_path, **kwargs)


# torch's message for each weight of another shape in `load_state_dict`.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in "
    r"current model is torch\.Size\(\[([^\]]*)\]\)"
)


def read_adapter_config(adapter: str):
    """The `PeftConfig` of an adapter folder or Hub repo; a `ChartWizValueError` where there is no adapter there."""
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter)
    except ValueError as error:
        raise ChartWizValueError(f"{adapter} is not a PEFT adapter (no adapter_config.json): {error}") from None


def load_adapter(model, adapter: str, base: str):
    """
    `model` (loaded from `base`) with the PEFT (LoRA) adapter of `adapter` applied, unmerged. A folder that is not an
    adapter, and an adapter whose weights have other shapes than the model's (named), are one-line errors.
    """
    from peft import PeftModel

    read_adapter_config(adapter)
    try:
        return PeftModel.from_pretrained(model, adapter)
    except RuntimeError as error:
        found = _SIZE_MISMATCH.findall(str(error))
        if not found:
            raise
        shown = "; ".join(
            f"{name}: {shape.replace(', ', 'x')} in the adapter, {size.replace(', ', 'x')} in the model"
            for name, shape, size in found[:3]
        )
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ChartWizValueError(
            f"{adapter} does not fit {base}: {len(found)} weights have another shape ({shown}{more})."
        ) from None


def load_processor(model_name_or_path: str, **kwargs):
    """
    The processor of a checkpoint with its fast tokenizer, the one way training, merging and answering load it: a
    slow SentencePiece twin splits text differently around special tokens, so a model would answer on other ids than
    it was trained on. `kwargs`: the Hub arguments of `from_pretrained` (`revision`, `trust_remote_code`...).
    """
    from transformers import AutoProcessor

    # transformers 4.57's AutoImageProcessor advises a fast image processor, which ChartWiz does not have;
    # `use_fast=False` would quiet it but also reach AutoTokenizer and pick the slow tokenizer. Quiet the advice alone.
    advice = logging.getLogger("transformers.models.auto.image_processing_auto")
    level = advice.level
    advice.setLevel(logging.ERROR)
    try:
        return AutoProcessor.from_pretrained(model_name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        # A checkpoint without its tokenizer or image processor files: the folder is incomplete, not the code wrong.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ChartWizOSError(
            f"{model_name_or_path}: cannot load its processor (tokenizer and image processor): {reason}"
        ) from error
    finally:
        advice.setLevel(level)


__all__ = [
    "answer_questions",
    "build_prompt",
    "chat_messages",
    "check_checkpoint",
    "check_device",
    "check_question",
    "ContextLengthError",
    "context_length",
    "encode_prompt",
    "fit_in_context",
    "fit_new_tokens",
    "generate_answers",
    "load_chart_image",
    "load_adapter",
    "load_chartwiz",
    "load_processor",
    "prepare_inputs",
    "prompt_length",
    "read_adapter_config",
    "suppressed_tokens",
]
