import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import chartwiz.demo
from chartwiz.commands.cli import build_parser, main
from chartwiz.commands.demo import streamlit_arguments
from chartwiz.demo.charts import MAX_IMAGE_PIXELS, open_chart_image
from chartwiz.demo.tables import parse_table
from chartwiz.inference import answer_questions, load_chartwiz, prepare_inputs, prompt_length
from chartwiz.inference.pdf import crop_fraction, is_pdf, pdf_page_count, render_pdf_page, render_pdf_thumbnails
from dataset_builder.rows import INSTRUCTIONS

from .conftest import draw_chart


APP = os.path.join(os.path.dirname(chartwiz.demo.__file__), "app.py")
MAX_NEW_TOKENS = 5
INJECTION = "<script>alert(1)</script> [x](javascript:alert(1)) ![i](http://example.com/a.png) **굵게**"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def two_page_pdf(path):
    """A report of two pages, each a different bar chart, drawn with matplotlib's PDF backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        for page, values in enumerate(([3, 7, 5], [9, 2, 4, 6])):
            figure, axes = pyplot.subplots(figsize=(8, 6))
            axes.bar([f"item {i}" for i in range(len(values))], values, color=["tab:blue", "tab:orange"][page])
            axes.set_title(f"Report page {page + 1}")
            pdf.savefig(figure)
            pyplot.close(figure)
    return path


@pytest.fixture(scope="module")
def model_and_processor(tiny_dir):
    return load_chartwiz(tiny_dir)


@pytest.fixture()
def app(tiny_dir, monkeypatch):
    monkeypatch.setenv("CHARTWIZ_MODEL", tiny_dir)
    monkeypatch.setenv("CHARTWIZ_MAX_NEW_TOKENS", str(MAX_NEW_TOKENS))
    monkeypatch.delenv("CHARTWIZ_ADAPTER", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at, name: str, data: bytes, mime: str):
    at.file_uploader[0].set_value((name, data, mime)).run()
    assert not at.exception, at.exception
    assert not at.error, [error.value for error in at.error]


def chat(at) -> list[tuple[str, list[tuple[str, str]]]]:
    """(role, [(element type, value)]) of every chat message on the page."""
    return [
        (message.name, [(element.type, getattr(element, "value", None)) for element in message.children.values()])
        for message in at.chat_message
    ]


def test_the_page_renders_and_waits_for_a_chart(app):
    assert app.title[0].value == "ChartWiz"
    assert app.file_uploader[0].allowed_type == [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".pdf"]
    assert app.chat_input[0].disabled, "no chart yet"
    assert not app.chat_message


def test_a_question_gets_the_models_answer_and_a_new_chart_clears_the_history(app, model_and_processor):
    model, processor = model_and_processor
    chart = draw_chart(320, 240, (3, 7, 5), seed=0)
    upload(app, "chart.png", png_bytes(chart), "image/png")
    assert not app.chat_input[0].disabled
    app.chat_input[0].set_value("가장 큰 값은?").run()
    expected = answer_questions(model, processor, [chart], ["가장 큰 값은?"], max_new_tokens=MAX_NEW_TOKENS)[0]
    assert chat(app) == [("user", [("text", "가장 큰 값은?")]), ("assistant", [("text", expected)])]

    # A second question has the first turn as its context.
    app.chat_input[0].set_value("합계는?").run()
    history = [("가장 큰 값은?", expected)]
    second = answer_questions(model, processor, [chart], ["합계는?"], [history], max_new_tokens=MAX_NEW_TOKENS)[0]
    assert [element for _, elements in chat(app) for element in elements][-1] == ("text", second)
    assert len(app.session_state["messages"]) == 4

    upload(app, "other.png", png_bytes(draw_chart(200, 300, (1, 2, 3, 4), seed=1)), "image/png")
    assert chat(app) == [] and app.session_state["messages"] == []


def test_user_text_and_model_output_are_shown_as_plain_text(app):
    upload(app, "chart.png", png_bytes(draw_chart()), "image/png")
    app.chat_input[0].set_value(INJECTION).run()
    messages = chat(app)
    assert messages[0] == ("user", [("text", INJECTION)])
    assert [kind for kind, _ in messages[1][1]] == ["text"]
    rendered = [element.value for element in app.markdown] + [element.value for element in app.caption]
    assert not any("javascript" in value or "<script>" in value for value in rendered)
    # On the next run (the history), still plain text.
    app.run()
    assert chat(app)[0] == ("user", [("text", INJECTION)])


def test_quick_buttons_ask_the_training_instructions_and_a_table_answer_becomes_a_table(app):
    upload(app, "chart.png", png_bytes(draw_chart()), "image/png")
    labels = [button.label for button in app.button]
    app.button[labels.index("표로 변환")].click().run()
    assert chat(app)[0] == ("user", [("text", INSTRUCTIONS["table"][0])])

    # What a trained model answers: the table text of docs/aihub-format.md.
    table = "TITLE | 연도별 점유율\n| 2021 | 2022 | 2023\nA사 | 30% | 35.5% | 40%\nB사 | 70% | =1+1 | -5%"
    app.session_state["messages"] = [{"role": "user", "content": "표"}, {"role": "assistant", "content": table}]
    app.run()
    frame = app.dataframe[0].value
    assert list(frame.columns) == ["항목", "2021", "2022", "2023"]
    assert frame.values.tolist() == [["A사", "30%", "35.5%", "40%"], ["B사", "70%", "=1+1", "-5%"]]
    assert chat(app)[1][1][0] == ("text", table), "the answer is also shown as text"
    assert app.get("download_button")[0].proto.label == "CSV로 내려받기"

    labels = [button.label for button in app.button]
    app.button[labels.index("대화 지우기")].click().run()
    assert chat(app) == [] and app.session_state["messages"] == []


def test_bad_uploads_are_messages_not_tracebacks(app):
    app.file_uploader[0].set_value(("chart.png", b"\x89PNG\r\n\x1a\n not an image", "image/png")).run()
    assert not app.exception and "cannot decode the image" in app.error[0].value
    # A text file named .png: what it is not, never the name of PIL's buffer (`<_io.BytesIO object at 0x...>`).
    app.file_uploader[0].set_value(("notes.png", "차트가 아닌 메모".encode(), "image/png")).run()
    message = app.error[0].value
    assert not app.exception and "BytesIO" not in message and " at 0x" not in message
    assert message.startswith("The uploaded image: cannot decode the image: it is not a PNG, JPEG or other image file")
    bomb = Image.new("1", (8000, 8000))
    assert bomb.width * bomb.height > MAX_IMAGE_PIXELS
    app.file_uploader[0].set_value(("bomb.png", png_bytes(bomb), "image/png")).run()
    assert not app.exception and "8000 x 8000" in app.error[0].value
    assert app.chat_input[0].disabled


@pytest.mark.slow
def test_a_pdf_page_is_picked_cropped_and_asked_about(app, model_and_processor, tmp_path):
    model, processor = model_and_processor
    pdf = two_page_pdf(tmp_path / "report.pdf").read_bytes()
    upload(app, "report.pdf", pdf, "application/pdf")
    page_box = app.selectbox[0]
    assert page_box.options == ["1쪽", "2쪽"]
    assert app.sidebar.get("image")[0].captions == ["1쪽", "2쪽"], "thumbnails of the pages"
    page_box.set_value(2).run()
    app.slider[0].set_value((10, 90)).run()  # horizontal crop
    app.chat_input[0].set_value("가장 큰 값은?").run()
    assert not app.exception and not app.error
    chart = crop_fraction(render_pdf_page(pdf, 2), (0.1, 0.0, 0.9, 1.0))
    expected = answer_questions(model, processor, [chart], ["가장 큰 값은?"], max_new_tokens=MAX_NEW_TOKENS)[0]
    assert chat(app)[1] == ("assistant", [("text", expected)])
    app.selectbox[0].set_value(1).run()
    assert chat(app) == [], "another page is another chart"


@pytest.mark.slow
def test_pdf_pages_render_and_each_can_be_asked_about_from_the_command_line(tiny_dir, tmp_path, capsys):
    path = two_page_pdf(tmp_path / "report.pdf")
    assert is_pdf(path) and is_pdf(path.read_bytes()) and not is_pdf(png_bytes(draw_chart()))
    assert pdf_page_count(path) == 2
    pages = [render_pdf_page(path, page) for page in (1, 2)]
    for page in pages:  # 8x6 inch pages at 150 dpi (PDFium rounds a pixel up)
        assert abs(page.width - 1200) <= 1 and abs(page.height - 900) <= 1
    assert pages[0].tobytes() != pages[1].tobytes()
    assert [thumbnail.width for thumbnail in render_pdf_thumbnails(path, width=120)] == [120, 120]
    small = render_pdf_page(path, 1, max_pixels=120_000)
    assert small.width * small.height <= 120_000 and abs(small.width / small.height - 4 / 3) < 0.01
    with pytest.raises(ValueError, match="has 2 pages; there is no page 3"):
        render_pdf_page(path, 3)
    with pytest.raises(ValueError, match="at most 1 are accepted"):
        pdf_page_count(path, max_pages=1)
    with pytest.raises(ValueError, match="cannot open the PDF"):
        pdf_page_count(b"%PDF-1.4 broken")

    model, processor = load_chartwiz(tiny_dir)
    for page, image in zip((1, 2), pages):
        expected = answer_questions(model, processor, [image], ["가장 큰 값은?"], max_new_tokens=MAX_NEW_TOKENS)[0]
        argv = ["ask", "--model", tiny_dir, str(path), "가장 큰 값은?", "--page", str(page)]
        assert main([*argv, "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
        assert capsys.readouterr().out.strip() == expected
    assert main(["ask", "--model", tiny_dir, str(path), "가장 큰 값은?"]) == 2
    assert "has 2 pages: choose the one with the chart with --page N" in capsys.readouterr().err
    image = tmp_path / "chart.png"
    draw_chart().save(image)
    assert main(["ask", "--model", tiny_dir, str(image), "값?", "--page", "2"]) == 2
    assert "--page is for PDF files" in capsys.readouterr().err


def test_table_text_parses_as_the_data_contract_writes_it():
    table = parse_table("TITLE | 지역별 인구\n서울 | 950만 명\n부산 | 340만 명")
    assert (table.title, table.columns) == ("지역별 인구", ["항목", "값"])
    assert table.rows == [["서울", "950만 명"], ["부산", "340만 명"]]
    ragged = parse_table("TITLE | t\n| a | b\nx | 1\ny | 2 | 3 | 4")
    assert ragged.columns == ["항목", "a", "b", "값 3"] and ragged.rows == [["x", "1", "", ""], ["y", "2", "3", "4"]]
    assert parse_table("가장 큰 값은 30%입니다.") is None and parse_table("a | b") is None
    # Prose around the table is left out and the case kept (the metric reads the same cells, lowercased).
    wrapped = parse_table("표로 바꾸면 다음과 같습니다.\ntitle | 점유율\n| 2021 | 2022\nA사 | 30% | 35%\n이상입니다.")
    assert (wrapped.title, wrapped.columns) == ("점유율", ["항목", "2021", "2022"])
    assert wrapped.rows == [["A사", "30%", "35%"]]
    csv = parse_table("TITLE | t\n=HYPERLINK(1) | -5% | +cmd | @x").to_csv().decode("utf-8-sig").splitlines()
    assert csv == ["항목,값 1,값 2,값 3", "'=HYPERLINK(1),-5%,'+cmd,'@x"]


def test_uploaded_images_with_transparency_are_put_on_white():
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 10, 10))
    opened = open_chart_image(png_bytes(image))
    assert opened.mode == "RGB"
    assert opened.getpixel((30, 20)) == (255, 255, 255) and opened.getpixel((5, 5)) == (0, 0, 255)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            return response.read()
    except OSError:
        return None


def start_demo(model: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "chartwiz.commands.cli", "demo", "--model", model, "--port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_demo_command_options_keep_the_page_local_and_private(tiny_dir):
    arguments = streamlit_arguments(build_parser().parse_args(["demo", "--model", tiny_dir, "--port", "8600"]))
    assert arguments[:2] == ["run", APP]
    assert arguments[arguments.index("--server.address") + 1] == "127.0.0.1"
    assert arguments[arguments.index("--server.port") + 1] == "8600"
    assert arguments[arguments.index("--browser.gatherUsageStats") + 1] == "false"
    assert arguments[arguments.index("--client.showErrorDetails") + 1] == "none"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_demo_process_is_its_server_and_stopping_it_stops_the_page(tiny_dir, stop):
    port = free_port()
    demo = start_demo(tiny_dir, port)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and demo.poll() is None and health(port) != b"ok":
            time.sleep(0.2)
        assert health(port) == b"ok", demo.stdout.read() if demo.poll() is not None else "no answer"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        assert psutil.Process(demo.pid).children(recursive=True) == [], "no server process of its own"
        demo.send_signal(stop)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert health(port) is None, "nothing answers once the demo is stopped"
    assert "Traceback" not in demo.stdout.read()


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_command_before_any_server(tiny_dir, tmp_path):
    from .conftest import damaged_checkpoint

    broken = str(tmp_path / "broken")
    damaged_checkpoint(tiny_dir, broken, drop=1)
    missing = str(tmp_path / "nonexistent")
    for model, message in ((missing, f"{missing}: no such directory."), (broken, "the weights do not fit the model")):
        port = free_port()
        demo = start_demo(model, port)
        output, _ = demo.communicate(timeout=300)
        assert demo.returncode == 2 and health(port) is None
        last = output.strip().splitlines()[-1]
        assert last.startswith("chartwiz demo: error: ") and message in last
        assert "Traceback" not in output and "You can now view" not in output


class RecordingPlaceholder:
    """Stands in for `st.empty()`: keeps what is shown; with `fail_after`, raises as Streamlit does on a rerun."""

    def __init__(self, fail_after=None):
        self.shown, self.fail_after = [], fail_after

    def text(self, body):
        self.shown.append(body)
        if self.fail_after is not None and len(self.shown) > self.fail_after:
            raise RuntimeError("the page went away")


def test_streaming_shows_the_answer_as_it_grows_and_stops_with_the_page(model_and_processor):
    import threading

    from chartwiz.demo.streaming import StopWhenSet, fit_history, stream_answer

    model, processor = model_and_processor
    chart, lock = draw_chart(), threading.Lock()
    expected = answer_questions(model, processor, [chart], ["값?"], max_new_tokens=12, min_new_tokens=12)[0]
    placeholder = RecordingPlaceholder()
    answer = stream_answer(model, processor, lock, chart, "값?", [], 12, placeholder, min_new_tokens=12)
    assert answer == expected and placeholder.shown[-1] == expected and len(placeholder.shown) > 2
    assert all(shown.endswith(" ▌") for shown in placeholder.shown[:-1])

    with pytest.raises(RuntimeError, match="went away"):
        stream_answer(model, processor, lock, chart, "값?", [], 500, RecordingPlaceholder(fail_after=1))
    assert not lock.locked() and not any(t.name == "chartwiz-generate" for t in threading.enumerate())
    stop = threading.Event()
    stop.set()
    batch = prepare_inputs(processor, [chart], ["값?"])
    output = model.generate(**batch, max_new_tokens=50, min_new_tokens=50, stopping_criteria=[StopWhenSet(stop)])
    assert output.shape[1] == batch["input_ids"].shape[1] + 1, "a set event ends the generation after one token"

    # History that does not fit the context is dropped from its oldest turn.
    history = [("첫 질문 " * 40, "첫 답 " * 40), ("둘째 질문", "둘째 답")]
    limit = model.config.text_config.max_position_embeddings
    whole, last = (prompt_length(processor, "값?", kept) for kept in (history, history[1:]))
    assert whole > last
    assert fit_history(processor, limit, "값?", history, limit - whole) == history
    assert fit_history(processor, limit, "값?", history, limit - whole + 1) == history[1:]
    assert fit_history(processor, limit, "값?", history, limit - last + 1) == []
    with pytest.raises(ValueError, match="too long for the model's context"):
        fit_history(processor, limit, "값?", history, limit)


class StubOpenAIServer(http.server.ThreadingHTTPServer):
    """
    An HTTP server on 127.0.0.1 answering as an OpenAI-compatible server does when things go wrong: `/v1/models`
    lists one model; a chat completion waits `delay` seconds, then gets `status` with `body`.
    """

    def __init__(self, status=200, body=None, delay=0.0):
        self.status, self.body, self.delay = status, body or {}, delay
        super().__init__(("127.0.0.1", 0), StubOpenAIHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()


class StubOpenAIHandler(http.server.BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(200, {"object": "list", "data": [{"id": "chartwiz", "object": "model", "owned_by": "me"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.delay)
        try:
            self.reply(self.server.status, self.server.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            pass

    def log_message(self, *args):
        pass


CONTEXT_REFUSAL = {
    "error": {
        "message": "This model's maximum context length is 1024 tokens. However, your request has 2077 input tokens.",
        "type": "BadRequestError",
        "code": 400,
    }
}


@pytest.mark.slow
def test_a_server_that_is_down_slow_or_refusing_is_a_message_in_words():
    from chartwiz.demo.server import ServerChat, ServerError

    chart = draw_chart()
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError, match=f"^{down} 서버에 연결할 수 없습니다"):
        ServerChat(down, timeout=5).stream_answer(chart, "값?", [], 5, RecordingPlaceholder())
    with StubOpenAIServer(delay=3.0) as slow:
        with pytest.raises(ServerError, match="제때 응답하지 않았습니다"):
            ServerChat(slow.url, timeout=0.5).stream_answer(chart, "값?", [], 5, RecordingPlaceholder())
    with StubOpenAIServer(400, CONTEXT_REFUSAL) as refusing:
        chat = ServerChat(refusing.url, timeout=5)
        assert chat.model() == "chartwiz"
        with pytest.raises(ServerError, match="^서버가 질문을 받지 않았습니다: This model's maximum context length"):
            chat.stream_answer(chart, "값?", [], 5, RecordingPlaceholder())
    with StubOpenAIServer(500, {"error": {"message": "EngineCore died", "code": 500}}) as failing:
        with pytest.raises(ServerError, match=r"^서버 오류 \(500\): EngineCore died"):
            ServerChat(failing.url, model="chartwiz", timeout=5).stream_answer(
                chart, "값?", [], 5, RecordingPlaceholder()
            )


@pytest.mark.slow
def test_the_page_in_server_mode_shows_a_server_error_and_keeps_going(monkeypatch):
    monkeypatch.delenv("CHARTWIZ_MODEL", raising=False)
    monkeypatch.setenv("CHARTWIZ_SERVER_TIMEOUT", "5")
    with StubOpenAIServer(400, CONTEXT_REFUSAL) as refusing:
        monkeypatch.setenv("CHARTWIZ_SERVER", refusing.url)
        page = AppTest.from_file(APP, default_timeout=120)
        page.run()
        assert not page.exception, page.exception
        upload(page, "chart.png", png_bytes(draw_chart()), "image/png")
        page.chat_input[0].set_value("값?").run()
        assert not page.exception, page.exception
        assert [error.value for error in page.error] == [
            "서버가 질문을 받지 않았습니다: " + CONTEXT_REFUSAL["error"]["message"]
        ]
        assert page.session_state["messages"] == [], "a refused question is not part of the conversation"
        assert not page.chat_input[0].disabled


def test_the_server_mode_takes_no_model_or_adapter(tiny_dir, capsys):
    with pytest.raises(SystemExit) as parse_error:
        main(["demo", "--server", "http://127.0.0.1:9/v1", "--model", tiny_dir])
    assert parse_error.value.code == 2
    assert "argument --model: not allowed with argument --server" in capsys.readouterr().err
    assert main(["demo", "--server", "http://127.0.0.1:9/v1", "--adapter", tiny_dir]) == 2
    assert "--adapter goes with --model" in capsys.readouterr().err
