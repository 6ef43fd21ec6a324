"""
A question about one chart as another model's inputs: its own chat messages (the chart in the first user turn),
rendered by its own chat template and processed by its own processor, for any checkpoint that loads with
`AutoProcessor`. What `chartwiz evaluate --model` asks models other than ChartWiz with, on either engine.
"""

import hashlib
from collections.abc import Sequence
from typing import Optional

from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from chartwiz.names import normalize_text

from .prompts import check_question


def chat_messages(
    question: str,
    history: Sequence[tuple[str, str]] = (),
    system: Optional[str] = None,
    image: Optional[Image.Image] = None,
    image_token: Optional[str] = None,
) -> list[dict]:
    """
    The conversation of a question about one chart in the content-list form of transformers' chat templates: an
    optional system turn, the earlier `(question, answer)` turns, then `question`, every text in the Unicode form
    ChartWiz reads (NFC: another model's processor does not normalize); the chart goes first in the first user turn,
    as `{"type": "image"}` (or `{"type": "image", "image": image}` where given, the form
    `apply_chat_template(tokenize=True)` takes). Raises `ValueError` for an empty question or one holding
    `image_token`, the processor's own placeholder, which would stand for a chart nobody gave.
    """
    messages = [{"role": "system", "content": [{"type": "text", "text": normalize_text(system)}]}] if system else []
    chart = {"type": "image"} if image is None else {"type": "image", "image": image}
    for asked, answered in [*history, (question, None)]:
        asked = check_question(asked, image_token) if image_token else check_question(asked)
        content = [{"type": "text", "text": normalize_text(asked)}]
        if not any(message["role"] == "user" for message in messages):
            content.insert(0, chart)
        messages.append({"role": "user", "content": content})
        if answered is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": normalize_text(answered)}]})
    return messages


def render_prompt(processor, question: str, history: Sequence[tuple[str, str]] = (), system: Optional[str] = None):
    """The chat template's text for the question, ending with the assistant's turn, one placeholder for the chart."""
    messages = chat_messages(question, history, system, image_token=getattr(processor, "image_token", None))
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def adds_special_tokens(processor, prompt: str) -> bool:
    """
    Whether tokenizing a rendered prompt adds the tokenizer's special tokens: not where the template wrote the BOS
    itself, the rule of transformers' own `apply_chat_template(tokenize=True)`, so no prompt starts with two.
    """
    bos = getattr(processor.tokenizer, "bos_token", None)
    return not (bos is not None and prompt.startswith(bos))


def chat_inputs(
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    histories: Optional[Sequence[Sequence[tuple[str, str]]]] = None,
    system: Optional[str] = None,
) -> BatchFeature:
    """
    The model inputs of `questions[i]` about `images[i]` (after `histories[i]`) as one left-padded batch: each
    conversation rendered by the processor's chat template and given, with its chart, to the processor itself,
    which expands the placeholder as the model expects. Raises `ValueError` as `chat_messages` does.
    """
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images for {len(questions)} questions.")
    histories = histories if histories is not None else [()] * len(questions)
    if len(histories) != len(questions):
        raise ValueError(f"Got {len(histories)} histories for {len(questions)} questions.")
    prompts = [render_prompt(processor, question, history, system) for question, history in zip(questions, histories)]
    return processor(
        images=[[image] for image in images],
        text=prompts,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        add_special_tokens=adds_special_tokens(processor, prompts[0]),
    )


def prompt_token_ids(
    processor, question: str, history: Sequence[tuple[str, str]] = (), system: Optional[str] = None
) -> list[int]:
    """
    The token ids of the rendered prompt with the chart's placeholder as the template wrote it, unexpanded: what
    vLLM takes, expanding it by its own processing of the model; its length is the prompt's before the chart's tokens.
    """
    prompt = render_prompt(processor, question, history, system)
    return processor.tokenizer(prompt, add_special_tokens=adds_special_tokens(processor, prompt))["input_ids"]


def chat_template_sha256(processor) -> str:
    """What the prompts depend on besides the questions: the chat template's text."""
    return hashlib.sha256((processor.chat_template or "").encode("utf-8")).hexdigest()


__all__ = [
    "adds_special_tokens",
    "chat_inputs",
    "chat_messages",
    "chat_template_sha256",
    "prompt_token_ids",
    "render_prompt",
]
