"""`chartwiz demo`: the Streamlit web demo (chat about a chart or a PDF report) on a local port."""

import os
import signal
import subprocess
import sys


def streamlit_command(args) -> list[str]:
    """The `streamlit run` command line of the demo, with the server options it needs."""
    from ..demo.charts import MAX_UPLOAD_MB

    app = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "app.py")
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        app,
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        # No tracebacks on the page, no usage statistics sent anywhere.
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "minimal",
        "--browser.gatherUsageStats",
        "false",
    ]


def run(args):
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise ValueError("The demo needs Streamlit: pip install 'chartwiz[demo]'")
    environment = {
        **os.environ,
        "CHARTWIZ_MODEL": os.path.abspath(args.model) if os.path.isdir(args.model) else args.model,
        "CHARTWIZ_ADAPTER": os.path.abspath(args.adapter) if args.adapter else "",
        "CHARTWIZ_MAX_NEW_TOKENS": str(args.max_new_tokens),
    }
    print(f"ChartWiz demo on http://{args.address}:{args.port} (Ctrl+C stops it)", flush=True)
    server = subprocess.Popen(streamlit_command(args), env=environment)
    try:
        code = server.wait()
    except KeyboardInterrupt:  # Ctrl+C reaches Streamlit too, which shuts down by itself
        code = server.wait()
    # Stopped by Ctrl+C or a termination signal is a normal end of the demo.
    if code not in (0, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise OSError(f"streamlit exited with code {code}")


def register(subcommands) -> None:
    parser = subcommands.add_parser("demo", help="serve the web demo: chat about a chart or a PDF report")
    parser.add_argument("--model", required=True, help="ChartWiz checkpoint directory or Hub repo")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply, unmerged")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; 0.0.0.0 to share the page on the network)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.set_defaults(func=run, prog=parser.prog)
