"""
The prompts of questions about charts and the context they must fit in: questions checked, conversations put through
the processor's chat template, and the new tokens that fit after a prompt in the language model's context.
"""

from collections.abc import Sequence
from typing import Optional

from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from chartwiz.errors import ChartWizValueError
from chartwiz.names import IMAGE_TOKEN


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


__all__ = [
    "build_prompt",
    "chat_messages",
    "check_question",
    "context_length",
    "ContextLengthError",
    "encode_prompt",
    "fit_in_context",
    "fit_new_tokens",
    "prepare_inputs",
    "prompt_length",
]
