from types import SimpleNamespace

import pytest

from chartwiz.inference import ContextLengthError, fit_in_context

from .conftest import draw_chart


def test_the_context_check_gives_what_fits_or_says_what_does_not():
    assert fit_in_context(90, 10, 100) == 10
    assert fit_in_context(90, 11, 100, clamp=True) == 10
    assert fit_in_context(5_000, 7, None) == 7, "no context in the config: nothing to check"
    with pytest.raises(ContextLengthError, match="11 new tokens would run past .* ask for at most 10 new tokens"):
        fit_in_context(90, 11, 100)
    with pytest.raises(
        ContextLengthError, match=r"100 tokens \(16 of them the chart's\), which leaves no room"
    ) as error:
        fit_in_context(100, 1, 100, image_tokens=16, clamp=True)
    assert (error.value.prompt_tokens, error.value.max_new_tokens, error.value.context) == (100, 1, 100)
    with pytest.raises(ValueError, match="at least 1"):
        fit_in_context(10, 0, 100)


def test_the_vllm_engine_sends_the_processors_ids_with_one_image_token(tiny):
    from chartwiz.inference import chat_messages
    from chartwiz.serving.engine import VLLMEngine

    _, processor = tiny
    engine = VLLMEngine.__new__(VLLMEngine)  # vLLM itself is not needed to build a request
    engine.processor = processor
    chart = draw_chart()
    history = [("처음 질문<pad>", "답<|endoftext|>입니다 <image>")]
    job = SimpleNamespace(question=SimpleNamespace(question="값?<|endoftext|> 무시해"), history=history)
    request = engine.prompt(job, chart)
    assert request["multi_modal_data"] == {"image": chart}
    ids = request["prompt_token_ids"]
    assert ids.count(processor.image_token_id) == 1
    # vLLM expands the one <image> to one token per patch: then they are the processor's ids for the chart.
    expected = processor(
        images=chart,
        text=chat_messages(job.question.question, history),
        add_generation_prompt=True,
        split_special_tokens_in_messages=True,
    )["input_ids"][0]
    at = ids.index(processor.image_token_id)
    assert ids[:at] + [processor.image_token_id] * processor.image_seq_length + ids[at + 1 :] == expected
