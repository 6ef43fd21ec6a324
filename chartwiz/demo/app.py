"""
The ChartWiz web demo: upload a chart or a PDF report, pick a page and crop the chart, then chat about it.

Start it with `chartwiz demo --model DIR`, which loads the model, then serves this file with Streamlit in the same
process, the model named in the environment (`CHARTWIZ_MODEL`, `CHARTWIZ_ADAPTER`, `CHARTWIZ_MAX_NEW_TOKENS`) and the
server options the demo needs; `streamlit run` on this file works too. With `chartwiz demo --server URL`
(`CHARTWIZ_SERVER`, `CHARTWIZ_SERVED_MODEL`, `CHARTWIZ_SERVER_TIMEOUT`) the answers come from an OpenAI-compatible
ChartWiz server such as vLLM's, which many pages share, and no model is loaded here.

Everything a user types and everything the model says is shown with `st.text` (no Markdown, no HTML) or in a data
grid, so a question such as `<script>...</script>` or `[x](javascript:...)` is displayed, never interpreted.
"""

import functools
import hashlib
import logging
import os

import streamlit as st

from chartwiz.demo.charts import (
    IMAGE_TYPES,
    MAX_PDF_PAGES,
    MAX_UPLOAD_MB,
    check_upload_size,
    crop_fraction,
    is_pdf,
    open_chart_image,
)
from chartwiz.demo.model import load_demo_model
from chartwiz.demo.server import ServerChat, ServerError
from chartwiz.demo.streaming import stream_answer
from chartwiz.demo.tables import parse_table
from chartwiz.errors import ChartWizError, ChartWizValueError
from chartwiz.inference.pdf import pdf_page_count, render_pdf_page, render_pdf_thumbnails
from chartwiz.inference.prompts import check_question
from chartwiz.names import INSTRUCTIONS


logger = logging.getLogger("chartwiz.demo")

# The three finetune tasks, asked with the instruction the model was trained on.
QUICK_ASKS = {
    "표로 변환": INSTRUCTIONS["table"][0],
    "자세히 설명": INSTRUCTIONS["description"][0],
    "요약": INSTRUCTIONS["summary"][0],
}


@st.cache_resource(show_spinner="모델을 불러오는 중입니다...")
def get_model(path: str, adapter: str | None):
    """The model, its processor and a lock: loaded once per server process and shared by every browser tab."""
    return load_demo_model(path, adapter)


@st.cache_resource(show_spinner=False)
def get_server_chat(url: str, model: str | None, timeout: float):
    """The client of the ChartWiz server at `url`, shared by every browser tab."""
    return ServerChat(url, model=model, timeout=timeout)


def answerer():
    """What answers a question here: the ChartWiz server named in the environment, or the model loaded in-process."""
    server = os.environ.get("CHARTWIZ_SERVER")
    if server:
        timeout = float(os.environ.get("CHARTWIZ_SERVER_TIMEOUT") or 120)
        return get_server_chat(server, os.environ.get("CHARTWIZ_SERVED_MODEL") or None, timeout).stream_answer
    model_path = os.environ.get("CHARTWIZ_MODEL")
    if not model_path:
        st.error(
            "모델이 지정되지 않았습니다: `chartwiz demo --model DIR` 또는 `--server URL`로 실행하세요 (또는 "
            "CHARTWIZ_MODEL)."
        )
        st.stop()
    try:
        model, processor, lock = get_model(model_path, os.environ.get("CHARTWIZ_ADAPTER") or None)
    except ChartWizError as error:
        st.error(f"모델을 불러오지 못했습니다: {error}")
        st.stop()
    return functools.partial(stream_answer, model, processor, lock)


@st.cache_data(max_entries=8, show_spinner=False)
def pdf_thumbnails(data: bytes):
    return render_pdf_thumbnails(data, width=120, max_pages=MAX_PDF_PAGES)


@st.cache_data(max_entries=32, show_spinner=False)
def pdf_page(data: bytes, page: int):
    return render_pdf_page(data, page, max_pages=MAX_PDF_PAGES)


def show_table(text: str, key: str) -> None:
    """A table answer also as a data grid and a CSV download."""
    table = parse_table(text)
    if table is None:
        return
    if table.title:
        st.text(f"표: {table.title}")
    st.dataframe(table.to_pandas(), hide_index=True)
    st.download_button("CSV로 내려받기", table.to_csv(), file_name="chartwiz_table.csv", mime="text/csv", key=key)


def choose_chart():
    """The chart the user is asking about (upload, PDF page, crop) and a key that changes with it; `None` first."""
    with st.sidebar:
        st.header("차트")
        upload = st.file_uploader(
            f"차트 이미지 또는 PDF 보고서 (최대 {MAX_UPLOAD_MB} MB)",
            type=[*IMAGE_TYPES, "pdf"],
            max_upload_size=MAX_UPLOAD_MB,
        )
        if upload is None:
            st.text("차트 이미지나 차트가 있는 PDF를 올려 주세요.")
            return None, None
        data = upload.getvalue()
        check_upload_size(data)
        digest = hashlib.sha256(data).hexdigest()
        if is_pdf(data):
            pages = pdf_page_count(data, max_pages=MAX_PDF_PAGES)
            thumbnails = pdf_thumbnails(data)
            st.image(thumbnails, caption=[f"{page}쪽" for page in range(1, pages + 1)], width=72)
            page = st.selectbox("차트가 있는 쪽", range(1, pages + 1), format_func=lambda number: f"{number}쪽")
            image = pdf_page(data, page)
            digest = f"{digest}:{page}"
        else:
            image = open_chart_image(data)
        st.text("차트만 남도록 잘라내기 (%)")
        left, right = st.slider("가로", 0, 100, (0, 100), key=f"crop-x-{digest}")
        top, bottom = st.slider("세로", 0, 100, (0, 100), key=f"crop-y-{digest}")
        if (left, top, right, bottom) != (0, 0, 100, 100):
            if right <= left or bottom <= top:
                raise ChartWizValueError("잘라낸 영역이 비어 있습니다: 가로나 세로 범위를 넓혀 주세요.")
            image = crop_fraction(image, (left / 100, top / 100, right / 100, bottom / 100))
        return image, f"{digest}:{left},{top},{right},{bottom}"


def main():
    st.set_page_config(page_title="ChartWiz", layout="wide")
    st.title("ChartWiz")
    st.text("차트에 대해 한국어로 물어보세요: 값, 비교, 설명, 요약, 표 변환.")

    max_new_tokens = int(os.environ.get("CHARTWIZ_MAX_NEW_TOKENS") or 512)
    answer_with = answerer()

    try:
        chart, chart_key = choose_chart()
    except ChartWizError as error:
        chart, chart_key = None, None
        st.error(str(error))
    state = st.session_state
    if state.get("chart_key") != chart_key:
        # A new chart starts a new conversation.
        state.chart_key, state.messages = chart_key, []
    messages = state.setdefault("messages", [])

    # Outside the columns, so that the input stays at the bottom of the page.
    typed = st.chat_input("차트에 대해 물어보세요", disabled=chart is None)
    chart_column, chat_column = st.columns([2, 3], gap="large")
    with chart_column:
        if chart is not None:
            st.image(chart, width="stretch")
        clear_slot = st.empty()  # filled after the chat, when this run's question is in the history
    with chat_column:
        asked = None
        buttons = st.columns(len(QUICK_ASKS))
        for column, (label, instruction) in zip(buttons, QUICK_ASKS.items()):
            if column.button(label, disabled=chart is None, width="stretch"):
                asked = instruction
        for index, message in enumerate(messages):
            with st.chat_message(message["role"]):
                st.text(message["content"])
                if message["role"] == "assistant":
                    show_table(message["content"], key=f"csv-{index}")
        asked = typed or asked
        if asked and chart is not None:
            ask(answer_with, chart, asked, messages, max_new_tokens)
    if chart is not None:
        clear_slot.button("대화 지우기", disabled=not messages, on_click=lambda: state.update(messages=[]))


def ask(answer_with, chart, question: str, messages: list, max_new_tokens: int) -> None:
    """Shows `question` and the answer `answer_with(chart, question, history, max_new_tokens, placeholder)` streams."""
    history = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages) - 1, 2)]
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        placeholder = st.empty()
        try:
            question = check_question(question)
            answer = answer_with(chart, question, history, max_new_tokens, placeholder)
        except (ServerError, ChartWizError) as error:
            placeholder.empty()
            st.error(str(error))
            return
        except Exception:  # noqa: BLE001 - the page shows a message; the traceback goes to the server log
            logger.exception("generation failed")
            placeholder.empty()
            st.error("답변을 만들지 못했습니다. 자세한 내용은 서버 로그에 있습니다.")
            return
        messages.extend([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        show_table(answer, key=f"csv-{len(messages) - 1}")


main()
