"""
The core install: `pip install chartwiz` into a fresh virtual environment (no system site-packages), then `chartwiz
ask` on a tiny checkpoint, a chart and a PDF page. Training, evaluation and the demo are extras: their packages are
not there, and the commands that need them say in one line which extra installs them.
"""

import json
import os
import shutil
import subprocess
import sys
import venv

import pytest
import torch
import transformers

from .conftest import draw_chart


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the extras bring and the core install must not (pandas and psutil come with datasets and accelerate).
EXTRA_ONLY = ("trl", "matplotlib", "sacrebleu", "rouge_score", "rapidfuzz", "scipy", "streamlit", "pytest", "ruff")


def _copy_project(target) -> str:
    # A copy, so that building the wheel leaves no build/ or egg-info in the working tree.
    target.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "chartwiz_cli.py"):
        shutil.copy(os.path.join(ROOT, name), target / name)
    for package in ("chartwiz", "chartwiz_hf", "dataset_builder"):
        shutil.copytree(os.path.join(ROOT, package), target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


def _lane_constraints() -> str:
    major = "4.57" if transformers.__version__.startswith("4.") else "5"
    return os.path.join(ROOT, "constraints", f"transformers-{major}.txt")


@pytest.fixture(scope="module")
def core_env(tmp_path_factory):
    """A fresh venv with this lane's torch and `pip install .` (the core alone); yields its bin folder."""
    work = tmp_path_factory.mktemp("core-install")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)  # not system_site_packages: the dev environment must not leak in
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    torch_version = torch.__version__.split("+")[0]
    subprocess.run([*pip, "install", "--quiet", f"torch=={torch_version}"], check=True)
    project = _copy_project(work / "project")
    install_command = [*pip, "install", project, "-c", _lane_constraints()]
    install = subprocess.run(install_command, capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    output = install.stdout + install.stderr
    for warning in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "SetuptoolsWarning"):
        assert warning not in output, f"setuptools warns at install: {output[output.index(warning) - 200 :][:1500]}"
    yield env_dir / "bin"
    shutil.rmtree(env_dir)  # 1.5 GB that the rest of the run has no use for


def _run(bin_dir, *argv, cwd):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=cwd, env=environment, check=False
    )


@pytest.mark.slow
def test_core_install_asks_about_a_chart_and_a_pdf_page(core_env, tiny_dir, tmp_path):
    draw_chart().save(tmp_path / "chart.png")
    draw_chart(bars=(2, 9, 4)).save(tmp_path / "report.pdf")  # PIL writes a one-page PDF of the chart
    for argv in (["chart.png", "가장 큰 값은?"], ["report.pdf", "가장 큰 값은?", "--page", "1"]):
        asked = _run(core_env, "chartwiz", "ask", "--model", tiny_dir, *argv, "--max-new-tokens", "3", cwd=tmp_path)
        assert asked.returncode == 0, asked.stderr[-3000:]
        assert asked.stdout.strip(), "an answer is printed"


# Every module the core commands import loads (an undeclared import would fail here), from the venv's own copy.
_CORE_CHECK = f"""
import importlib.util, json
import chartwiz.inference.generation, chartwiz.inference.loading, chartwiz.inference.prompts, chartwiz.inference.pdf
import chartwiz.batch.run, chartwiz.models.merge, chartwiz_hf.compose
import chartwiz_hf.convert_chartwiz_llava_to_hf, chartwiz.evaluation.metrics
import chartwiz.commands.cli
import dataset_builder.build
print(json.dumps({{
    "package": chartwiz_hf.__file__,
    "extras_found": [m for m in {EXTRA_ONLY!r} if importlib.util.find_spec(m)],
}}))
"""


@pytest.mark.slow
def test_core_install_has_none_of_the_extras(core_env, tmp_path):
    checked = _run(core_env, "python", "-c", _CORE_CHECK, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]
    found = json.loads(checked.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(core_env.parent)), "the venv's copy, not this checkout"
    assert found["extras_found"] == []


@pytest.mark.slow
def test_commands_of_an_extra_name_it_in_one_line(core_env, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    row = {"id": "a", "task": "qa", "chart_type": "bar", "prediction": "3", "reference": "3"}
    predictions.write_text(json.dumps(row) + "\n", encoding="utf-8")
    evaluated = _run(
        core_env, "chartwiz", "evaluate", "--predictions", str(predictions), "--out", "report", cwd=tmp_path
    )
    assert evaluated.returncode == 2
    assert evaluated.stderr.strip().splitlines()[-1].endswith("pip install 'chartwiz[eval]'"), evaluated.stderr
    assert len(evaluated.stderr.strip().splitlines()) == 1, evaluated.stderr
    synthesized = _run(core_env, "chartwiz", "synth", "charts", "--n", "2", cwd=tmp_path)
    assert synthesized.returncode == 2
    assert synthesized.stderr.strip().splitlines() == [
        "chartwiz synth: error: chartwiz synth needs matplotlib, which is not installed: pip install 'chartwiz[train]'"
    ]


def test_missing_extra_message_names_the_extra(monkeypatch):
    from chartwiz.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "rapidfuzz", None)  # as if not installed: the import raises
    monkeypatch.setitem(sys.modules, "rapidfuzz.distance", None)
    with pytest.raises(
        MissingExtraError, match=r"^ANLS needs rapidfuzz, which is not installed: pip install 'chartwiz\[eval\]'$"
    ):
        require("rapidfuzz.distance", "ANLS")
    assert require("json", "Anything") is json
