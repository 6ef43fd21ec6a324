"""ChartWiz behind vLLM's OpenAI-compatible server: HF `generate`'s answers, however many requests come at once."""

import concurrent.futures

import openai
import pytest
import torch
from streamlit.testing.v1 import AppTest

from chartwiz.demo.server import ServerChat, ServerError, chat_messages
from chartwiz.inference import answer_questions, prepare_inputs
from tests.test_demo import APP, chat, png_bytes, upload

from .conftest import SERVED_MODEL, draw_chart


MAX_TOKENS = 8
QUESTIONS = ["값?", "가장 큰 막대는 무엇인가요?", "두 항목의 차이는?", "차트를 표로 바꿔 주세요."]


def client(url):
    return openai.OpenAI(base_url=url, api_key="EMPTY", timeout=300, max_retries=0)


def hf_answer(model, processor, chart, question, history=()):
    """
    Greedy token ids, one question at a time, through this environment's transformers (the reference). Ids, not
    text: a byte-level token cut in the middle of a character decodes differently one piece at a time.
    """
    inputs = prepare_inputs(processor, [chart], [question], [list(history)])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def served_answer(url, messages, stream=False, **extra):
    response = client(url).chat.completions.create(
        model=SERVED_MODEL,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=stream,
        extra_body={"min_tokens": MAX_TOKENS, "return_token_ids": True, **extra},
    )
    if not stream:
        return response.choices[0].model_extra["token_ids"]
    return [
        token for chunk in response if chunk.choices for token in chunk.choices[0].model_extra.get("token_ids") or []
    ]


def test_the_head_would_answer_image_placeholders_unsuppressed(eager_image_checkpoint):
    """What makes the served answers below show that `<image>` is never generated."""
    _, model, processor = eager_image_checkpoint
    inputs = prepare_inputs(processor, [draw_chart()], ["값?"])
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[])
    assert output[0, inputs["input_ids"].shape[1] :].tolist() == [processor.image_token_id] * 3


def test_streamed_answers_with_a_base64_chart_equal_hf_generate(server, eager_image_checkpoint):
    _, model, processor = eager_image_checkpoint
    for seed, question in enumerate(QUESTIONS):
        chart = draw_chart(200 + 60 * seed, 150 + 40 * seed, bars=(1 + seed, 4, 2), seed=seed)
        expected = hf_answer(model, processor, chart, question)
        assert len(expected) == MAX_TOKENS and processor.image_token_id not in expected
        assert served_answer(server, chat_messages(chart, question, []), stream=True) == expected, question
    # A second turn: the first answer as context, the chart in the first user turn.
    chart = draw_chart(seed=7)
    first = processor.decode(hf_answer(model, processor, chart, QUESTIONS[0]), skip_special_tokens=True).strip()
    history = [(QUESTIONS[0], first)]
    expected = hf_answer(model, processor, chart, QUESTIONS[1], history)
    assert served_answer(server, chat_messages(chart, QUESTIONS[1], history)) == expected


def test_concurrent_charts_a_text_only_request_and_an_over_long_prompt_leave_the_engine_serving(
    server, eager_image_checkpoint
):
    _, model, processor = eager_image_checkpoint
    charts = [
        draw_chart(160 + 20 * index, 240 - 5 * index, bars=(1 + index % 5, 3, 2), seed=index) for index in range(16)
    ]
    questions = [QUESTIONS[index % len(QUESTIONS)] for index in range(16)]
    expected = [hf_answer(model, processor, chart, question) for chart, question in zip(charts, questions)]
    text_only = [{"role": "user", "content": [{"type": "text", "text": "안녕하세요?"}]}]
    context = model.config.text_config.max_position_embeddings
    over_long = [{"role": "user", "content": [{"type": "text", "text": "값 " * context}]}]

    def ask(messages):
        try:
            return served_answer(server, messages)
        except openai.BadRequestError as error:
            return error

    requests = [chat_messages(chart, question, []) for chart, question in zip(charts, questions)]
    with concurrent.futures.ThreadPoolExecutor(len(requests) + 2) as pool:
        answers = list(pool.map(ask, [*requests, text_only, over_long]))

    *chart_answers, text_answer, refusal = answers
    assert chart_answers == expected
    assert all(processor.image_token_id not in answer for answer in [*chart_answers, text_answer])
    assert isinstance(text_answer, list) and len(text_answer) == MAX_TOKENS
    assert isinstance(refusal, openai.BadRequestError)
    assert "maximum context length" in str(refusal) or "longer than" in str(refusal), str(refusal)
    # Still serving, with the same answers.
    assert served_answer(server, requests[3]) == expected[3]


def test_the_demo_client_streams_the_servers_answer_and_says_what_went_wrong(server, eager_image_checkpoint):
    _, model, processor = eager_image_checkpoint
    chart = draw_chart(seed=3)
    shown = []

    class Placeholder:
        def text(self, value):
            shown.append(value)

    chat = ServerChat(server, timeout=120)
    assert chat.model() == SERVED_MODEL
    answer = chat.stream_answer(chart, QUESTIONS[0], [], MAX_TOKENS, Placeholder())
    expected = answer_questions(model, processor, [chart], [QUESTIONS[0]], max_new_tokens=MAX_TOKENS)[0]
    assert answer == expected and shown[-1] == expected
    with pytest.raises(ServerError, match="서버가 질문을 받지 않았습니다: .*context length"):
        chat.stream_answer(chart, "값 " * 2000, [], MAX_TOKENS, Placeholder())


def test_the_demo_in_server_mode_answers_from_the_server(server, eager_image_checkpoint, monkeypatch):
    _, model, processor = eager_image_checkpoint
    monkeypatch.setenv("CHARTWIZ_SERVER", server)
    monkeypatch.setenv("CHARTWIZ_MAX_NEW_TOKENS", str(MAX_TOKENS))
    monkeypatch.delenv("CHARTWIZ_MODEL", raising=False)
    monkeypatch.delenv("CHARTWIZ_SERVED_MODEL", raising=False)
    page = AppTest.from_file(APP, default_timeout=300)
    page.run()
    assert not page.exception, page.exception
    chart = draw_chart(320, 240, (3, 7, 5), seed=0)
    upload(page, "chart.png", png_bytes(chart), "image/png")
    page.chat_input[0].set_value("가장 큰 값은?").run()
    expected = answer_questions(model, processor, [chart], ["가장 큰 값은?"], max_new_tokens=MAX_TOKENS)[0]
    assert chat(page) == [("user", [("text", "가장 큰 값은?")]), ("assistant", [("text", expected)])]
    page.chat_input[0].set_value("합계는?").run()
    history = [("가장 큰 값은?", expected)]
    second = answer_questions(model, processor, [chart], ["합계는?"], [history], max_new_tokens=MAX_TOKENS)[0]
    assert [element for _, elements in chat(page) for element in elements][-1] == ("text", second)
