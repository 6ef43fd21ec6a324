import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw


# Set before `datasets` is imported: its cache of local files is keyed by their mtimes alone, so a run must not
# see another run's cached copies; nothing may come from the Hub either.
_HF_HOME = tempfile.mkdtemp(prefix="chartwiz-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def draw_chart(width: int = 320, height: int = 240, bars=(3, 7, 5), seed: int = 0) -> Image.Image:
    """A small bar chart drawn with PIL: white background, axes, bars of random colors."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(20, height - 20), (width - 10, height - 20)], fill="black", width=2)
    draw.line([(20, 10), (20, height - 20)], fill="black", width=2)
    slot = (width - 40) // max(1, len(bars))
    for index, value in enumerate(bars):
        top = height - 20 - int((height - 40) * value / max(bars))
        color = tuple(int(c) for c in rng.integers(0, 200, 3))
        draw.rectangle([30 + index * slot, top, 30 + index * slot + slot // 2, height - 21], fill=color)
    return image


def pix2struct_image_processor(**kwargs):
    """
    transformers' own Pix2Struct image processor on PIL and numpy, the reference for ChartWiz's:
    `Pix2StructImageProcessor` on transformers 4, `Pix2StructImageProcessorPil` on 5 (where the class named
    `Pix2StructImageProcessor` is built on torchvision).
    """
    import transformers

    reference = getattr(transformers, "Pix2StructImageProcessorPil", None) or transformers.Pix2StructImageProcessor
    return reference(**kwargs)


_WITHOUT_CHARTWIZ = """
import importlib.abc, sys

class BlockChartWiz(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("chartwiz", "chartwiz_hf", "dataset_builder"):
            raise ImportError("ChartWiz is not installed here")

sys.meta_path.insert(0, BlockChartWiz())
"""


def run_without_chartwiz(script: str, work_dir) -> dict:
    """
    Runs `script` in a fresh interpreter where this package cannot be imported (as on a machine that only has the
    checkpoint and `trust_remote_code=True`), and returns the JSON object its last printed line holds.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work_dir / "modules"), "PYTHONPATH": ""}
    source = _WITHOUT_CHARTWIZ + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, env=env, cwd=work_dir, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# The other test lane's interpreter (transformers 4.57 beside 5.x, or 5.x beside 4.57); `make test` sets it.
OTHER_PYTHON = os.environ.get("CHARTWIZ_OTHER_PYTHON")
_ANSWER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "answer_checkpoint.py")
CROSS_VERSION_QUESTIONS = [
    "값?",
    "이 차트에서 가장 큰 막대와 가장 작은 막대의 차이는 얼마인가요?",
    "두 번째 항목의 값",
]


def answers_in_the_other_lane(checkpoint, work_dir, image_paths, remote_code: bool, max_new_tokens: int) -> dict:
    """`tests/answer_checkpoint.py` run by the other lane's interpreter on `checkpoint`, its JSON output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work_dir / "modules"), "PYTHONPATH": ""}
    argv = [OTHER_PYTHON, _ANSWER_SCRIPT, str(checkpoint), "--images", *map(str, image_paths)]
    argv += ["--questions", *CROSS_VERSION_QUESTIONS, "--max-new-tokens", str(max_new_tokens)]
    argv += ["--remote-code"] if remote_code else []
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=work_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_answers_under_the_other_major(checkpoint, work_dir, max_new_tokens: int = 6):
    """
    A checkpoint saved by this test run answers the same greedy tokens under the other transformers major, loaded
    with the package and with `trust_remote_code` only, one question at a time and in a left-padded batch.
    """
    import transformers

    from .answer_checkpoint import answers_with_the_package

    if not OTHER_PYTHON:
        pytest.skip("CHARTWIZ_OTHER_PYTHON (the other transformers lane's python, set by `make test`) is not set")
    work_dir.mkdir(parents=True, exist_ok=True)
    images = [
        draw_chart(320, 240, (3, 7, 5), 0),
        draw_chart(200, 300, (1, 2, 3, 4), 1),
        draw_chart(500, 150, (9, 4), 2),
    ]
    paths = [work_dir / f"chart-{index}.png" for index in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    expected = answers_with_the_package(str(checkpoint), images, CROSS_VERSION_QUESTIONS, max_new_tokens)
    assert expected["batch"] == expected["alone"]
    for remote_code in (False, True):
        other = answers_in_the_other_lane(checkpoint, work_dir, paths, remote_code, max_new_tokens)
        assert other["transformers"].split(".")[0] != transformers.__version__.split(".")[0], other["transformers"]
        how = "with trust_remote_code only" if remote_code else "with the package"
        assert other["alone"] == expected["alone"], f"transformers {other['transformers']} {how}"
        assert other["batch"] == expected["batch"], f"transformers {other['transformers']} {how}, batched"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from chartwiz.models.tiny import make_tiny_chartwiz

    directory = tmp_path_factory.mktemp("tiny-chartwiz")
    make_tiny_chartwiz(str(directory), seed=0, max_patches=16)
    return str(directory)


@pytest.fixture()
def tiny(tiny_dir):
    from chartwiz_hf import ChartWizForConditionalGeneration, ChartWizProcessor

    torch.manual_seed(0)
    model = ChartWizForConditionalGeneration.from_pretrained(tiny_dir).eval()
    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    return model, processor


@pytest.fixture()
def charts():
    return [
        draw_chart(320, 240, (3, 7, 5), seed=0),
        draw_chart(200, 300, (1, 2, 3, 4), seed=1),
        draw_chart(500, 150, (9, 4), seed=2),
    ]


def damaged_checkpoint(source: str, target, drop: int = 0, reshape: int = 0, extra: int = 0) -> str:
    """
    A copy of the checkpoint `source` whose `model.safetensors` lacks its first `drop` weights, has the next
    `reshape` of another shape, and holds `extra` weights the model has no place for; returns the sorted names hit.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(os.path.join(target, "model.safetensors"))
    names = sorted(weights)
    for name in names[:drop]:
        del weights[name]
    for name in names[drop : drop + reshape]:
        weights[name] = torch.zeros(weights[name].numel() + 1)
    for index in range(extra):
        weights[f"model.unused_{index}.weight"] = torch.zeros(2)
    save_file(weights, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
    return names[: drop + reshape]


def ctrl_c_when(script: str, argv: list, ready, settle: float = 0.0) -> str:
    """
    Runs `python -c script *argv` as a terminal's foreground job (its own process group), waits until `ready()`
    holds, sends SIGINT to the whole group as Ctrl-C does, and returns the last line of its stderr after checking
    that it ended with status 130 and no traceback.
    """
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", script, *argv],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A terminal's job takes Ctrl-C even when this suite was started where SIGINT is ignored (a background job).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600  # the start of a process is slow on a busy machine
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.02)
    time.sleep(settle)
    assert process.poll() is None, process.stderr.read()
    os.killpg(process.pid, signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in errors, errors[-3000:]
    return errors.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def full_precision_training():
    """
    Full precision for a module's training runs: a TrainingArguments(bf16=True) anywhere earlier in the process
    leaves ACCELERATE_MIXED_PRECISION=bf16 in the environment, and transformers applies it to every later
    TrainingArguments, `bf16=False` or not.
    """
    with mock.patch.dict(os.environ, {"ACCELERATE_MIXED_PRECISION": "no"}):
        yield


@pytest.fixture(scope="session")
def chart_data(tmp_path_factory):
    """20 synthetic charts (10 train, 10 test) built into the pretrain / finetune / gpt / all configs."""
    from dataset_builder.build import build_dataset
    from dataset_builder.synth import generate

    root = tmp_path_factory.mktemp("recipes-data")
    generate(str(root / "synth"), 20, seed=3, test_fraction=0.5, progress=False)
    build_dataset(str(root / "synth"), str(root / "charts"), gpt_sources=[str(root / "synth" / "gpt_qa.jsonl")])
    return str(root / "charts")
