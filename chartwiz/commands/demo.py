"""`chartwiz demo`: the Streamlit web demo (chat about a chart or a PDF report) on a local port."""

import os
from dataclasses import dataclass, field
from typing import Optional

from chartwiz.errors import ChartWizValueError

from .parser import Exclusive


# The model the page asks: loaded here, or a server's.
ANSWERED_BY = Exclusive(required=True)


@dataclass(kw_only=True)
class DemoArguments:
    model: Optional[str] = field(
        default=None,
        metadata={
            "help": "ChartWiz checkpoint directory or Hub repo, loaded in this process",
            "exclusive": ANSWERED_BY,
        },
    )
    server: Optional[str] = field(
        default=None,
        metadata={
            "help": "an OpenAI-compatible ChartWiz server to ask instead (vLLM's, e.g. http://127.0.0.1:8000/v1)",
            "metavar": "URL",
            "exclusive": ANSWERED_BY,
        },
    )
    served_model: Optional[str] = field(
        default=None, metadata={"help": "--server: the model name (default: the server's)"}
    )
    server_timeout: float = field(default=120.0, metadata={"help": "--server: seconds to wait for it (default 120)"})
    adapter: Optional[str] = field(default=None, metadata={"help": "a PEFT (LoRA) adapter folder to apply, unmerged"})
    port: int = field(default=8501, metadata={"help": "port the page is served on"})
    address: str = field(
        default="127.0.0.1",
        metadata={
            "help": "address to listen on (default: this machine only; 0.0.0.0 to share the page on the network)"
        },
    )
    max_new_tokens: int = field(
        default=512,
        metadata={"help": "answer length limit (the oldest turns of a conversation are dropped to fit the context)"},
    )


def app_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "app.py")


def streamlit_arguments(args: DemoArguments) -> list[str]:
    """The arguments of `streamlit run` for the demo: the page and the server options it needs."""
    from chartwiz.demo.charts import MAX_UPLOAD_MB

    return [
        "run",
        app_path(),
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        # The page's code does not change while it is served.
        "--server.fileWatcherType",
        "none",
        # No tracebacks on the page, no usage statistics sent anywhere.
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "minimal",
        "--browser.gatherUsageStats",
        "false",
    ]


def run(args: DemoArguments):
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise ChartWizValueError("The demo needs Streamlit: pip install 'chartwiz[demo]'")
    if args.server:
        if args.adapter:
            raise ChartWizValueError(
                "--adapter goes with --model; a server answers with the model it was started with"
            )
        if importlib.util.find_spec("openai") is None:
            raise ChartWizValueError("The demo's --server mode needs the openai client: pip install 'chartwiz[demo]'")
        # The server may start after the page: a server that is not up is a message on the page, per question.
        os.environ.update(
            CHARTWIZ_SERVER=args.server,
            CHARTWIZ_SERVED_MODEL=args.served_model or "",
            CHARTWIZ_SERVER_TIMEOUT=str(args.server_timeout),
        )
    else:
        from chartwiz.demo.model import load_demo_model

        model = os.path.abspath(args.model) if os.path.isdir(args.model) else args.model
        adapter = os.path.abspath(args.adapter) if args.adapter else None
        # Loaded here, before any server exists: a model that cannot load is the command's error, not the page's.
        # The page, served by this same process, finds it loaded.
        load_demo_model(model, adapter)
        os.environ.update(CHARTWIZ_MODEL=model, CHARTWIZ_ADAPTER=adapter or "")
        os.environ.pop("CHARTWIZ_SERVER", None)
    os.environ["CHARTWIZ_MAX_NEW_TOKENS"] = str(args.max_new_tokens)
    print(f"ChartWiz demo on http://{args.address}:{args.port} (Ctrl+C stops it)", flush=True)
    from streamlit.web import cli as streamlit_cli

    # `streamlit run` in this process, so that the process is the server: SIGTERM or Ctrl+C to `chartwiz demo` stops
    # it (Streamlit's own handlers), and nothing is left behind answering.
    streamlit_cli.main(streamlit_arguments(args), prog_name="streamlit", standalone_mode=False)


NAME = "demo"
HELP = "serve the web demo: chat about a chart or a PDF report"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[DemoArguments],
        help=HELP,
        description=(
            "Serves the web demo (Streamlit): upload a chart image or a PDF report and chat about it, answered by the "
            "model loaded in this process or by a vLLM server.\n"
            "차트 이미지나 PDF 보고서를 올리고 대화하듯 질문하는 웹 데모를 엽니다."
        ),
    )
    parser.set_defaults(func=run)
