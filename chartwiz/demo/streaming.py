"""Streaming an answer to the page: generation in a thread, stopped when the page goes away, history that fits."""

import threading

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from chartwiz.errors import ChartWizValueError
from chartwiz.inference.generation import generate_answers
from chartwiz.inference.prompts import (
    ContextLengthError,
    context_length,
    fit_in_context,
    prepare_inputs,
    prompt_length,
)


def fit_history(processor, limit, question: str, history: list, max_new_tokens: int) -> list:
    """The latest turns of `history` that leave room for the question and the answer in the model's context."""
    if limit is None:
        return history
    for start in range(len(history) + 1):
        kept = history[start:]
        try:
            fit_in_context(prompt_length(processor, question, kept), max_new_tokens, limit)
        except ContextLengthError:
            continue
        return kept
    raise ChartWizValueError(
        f"The question is too long for the model's context of {limit} tokens (with {max_new_tokens} for the answer)."
    )


class StopWhenSet(StoppingCriteria):
    """Ends a generation once `event` is set: the page that asked for it is gone (rerun, tab closed)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_answer(
    model, processor, lock, chart, question: str, history: list, max_new_tokens: int, placeholder, **generate_kwargs
):
    """
    Generates the answer to `question` about `chart` (after `history`) in a thread and shows it in `placeholder` (an
    `st.empty()`, anything with `.text(str)`) as it comes; returns the whole answer. The history is cut from its
    oldest turn where it does not fit the model's context with the answer.
    """
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    result, failure = [], []

    def generate():
        try:
            stopping = StoppingCriteriaList([StopWhenSet(stop)])
            answers = generate_answers(
                model, processor, inputs, max_new_tokens, streamer, stopping_criteria=stopping, **generate_kwargs
            )
            result.extend(answers)
        except Exception as error:  # noqa: BLE001 - re-raised in the page's thread below
            failure.append(error)
            streamer.end()

    # The lock also covers the tokenizer: padding a prompt while another session's answer is decoded would fail.
    with lock:
        history = fit_history(processor, context_length(model.config), question, history, max_new_tokens)
        inputs = prepare_inputs(processor, [chart], [question], [history])
        worker = threading.Thread(target=generate, name="chartwiz-generate", daemon=True)
        worker.start()
        try:
            # Not st.write_stream: it renders the text as Markdown, and model output must stay plain text.
            shown = ""
            for piece in streamer:
                shown += piece
                placeholder.text(shown + " ▌")
        finally:
            # Streamlit ends a run by raising in this thread (a new question, a closed tab): stop the generation too,
            # and keep the lock until it has stopped.
            stop.set()
            worker.join()
    if failure:
        raise failure[0]
    answer = result[0] if result else shown.strip()
    placeholder.text(answer)
    return answer


__all__ = ["StopWhenSet", "fit_history", "stream_answer"]
