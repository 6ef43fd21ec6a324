"""
`chartwiz evaluate --engine vllm` for models other than ChartWiz: the tiny LLaVA-NeXT and Gemma 3 checkpoints of
`tests/chat_models.py` answer a built split as the transformers engine does.

vLLM 0.32's own implementations of these architectures import torchvision (through its Pixtral and SigLIP helpers),
which this environment cannot have; the runs here take `--vllm-model-impl transformers`, the models' transformers
code inside vLLM, as ChartWiz always does. On a GPU machine with torchvision, `auto` picks vLLM's own.
"""

import json
import os
import subprocess
import sys

import pytest

from chartwiz.batch.run_store import read_jsonl
from chartwiz.evaluation.run import evaluate_model
from tests.chat_models import ARCHITECTURES, make_tiny_chat_model, missing_architecture
from tests.test_evaluate import charts_dir  # noqa: F401

from .conftest import SERVER_START_SECONDS, VLLM_ENV


MAX_NEW_TOKENS = 6


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_vllm_answers_a_split_as_the_transformers_engine(name, charts_dir, tmp_path):  # noqa: F811
    reason = missing_architecture(name)
    if reason:
        pytest.skip(reason)
    model = make_tiny_chat_model(name, str(tmp_path / name))
    settings = {"config": "all", "max_new_tokens": MAX_NEW_TOKENS, "dtype": "float32", "instructions": "formats"}
    expected = evaluate_model(model, charts_dir, str(tmp_path / "transformers"), progress=False, **settings)

    out = tmp_path / "vllm"
    argv = [sys.executable, "-m", "chartwiz.commands.cli", "evaluate", "--model", model, "--dataset", charts_dir]
    argv += ["--config", "all", "--max-new-tokens", str(MAX_NEW_TOKENS), "--dtype", "float32"]
    argv += ["--instructions", "formats", "--engine", "vllm", "--vllm-model-impl", "transformers", "--out", str(out)]
    result = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **VLLM_ENV}, timeout=2 * SERVER_START_SECONDS
    )
    assert result.returncode == 0, result.stderr[-4000:]

    answers, vllm_answers = (
        {row["id"]: row["prediction"] for row in read_jsonl(str(folder / "predictions.jsonl"))}
        for folder in (tmp_path / "transformers", out)
    )
    assert len(answers) == expected["rows"] > 60
    assert vllm_answers == answers
    assert len(set(answers.values())) > 1, "the answers depend on the question"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["by_task"] == expected["by_task"]
    meta = json.loads((out / "answers.meta.json").read_text(encoding="utf-8"))
    assert meta["settings"]["engine"] == "vllm" and meta["settings"]["instructions"]["qa"].startswith("{question}")
