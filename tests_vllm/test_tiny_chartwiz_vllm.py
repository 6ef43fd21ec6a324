"""The shipped tiny ChartWiz served by vLLM answers held-out charts as transformers does."""

import json
import os
import subprocess
import sys

from chartwiz.batch.run_store import read_jsonl
from chartwiz.inference import answer_questions, load_chart_image, load_chartwiz
from chartwiz.names import INSTRUCTIONS
from dataset_builder.aihub import image_dir, table_text, text_dir
from dataset_builder.synth import FOLDER_OF_TYPE, MANIFEST_NAME, described_chart_type, generate

from .conftest import SERVER_START_SECONDS, VLLM_ENV


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "examples", "tiny-chartwiz")
MAX_NEW_TOKENS = 64


def test_vllm_answers_held_out_charts_as_transformers_does(tmp_path):
    # Six charts of the quickstart's draw, which the shipped model never saw: a description, a question and a table.
    asked = (INSTRUCTIONS["description"][0], "가장 큰 값은 무엇인가요?", INSTRUCTIONS["table"][0])
    generate(str(tmp_path / "synth"), 6, seed=0, test_fraction=0.0, progress=False)
    with open(tmp_path / "synth" / MANIFEST_NAME, encoding="utf-8") as file:
        entries = [json.loads(line) for line in file]
    questions, images, titles = [], [], {}
    for entry in entries:
        folder = FOLDER_OF_TYPE[entry["chart_type"]]
        path = os.path.join(image_dir(str(tmp_path / "synth"), entry["split"], folder), f"{entry['stem']}.jpg")
        label = os.path.join(text_dir(str(tmp_path / "synth"), entry["split"], folder), f"{entry['stem']}.json")
        with open(label, encoding="utf-8") as file:
            titles[entry["stem"]] = table_text(json.load(file), folder).splitlines()[0]
        for number, text in enumerate(asked):
            relative = os.path.relpath(path, tmp_path)
            questions.append({"id": f"{entry['stem']}-{number}", "image": relative, "text": text})
            images.append(load_chart_image(path))
    question_file = tmp_path / "questions.jsonl"
    question_file.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")

    model, processor = load_chartwiz(SHIPPED)
    expected = answer_questions(
        model, processor, images, [q["text"] for q in questions], max_new_tokens=MAX_NEW_TOKENS
    )

    answers = tmp_path / "answers.jsonl"
    command = [sys.executable, "-m", "chartwiz.commands.cli", "infer", "--engine", "vllm", "--model", SHIPPED]
    command += ["--questions", str(question_file), "--image-folder", str(tmp_path), "--answers", str(answers)]
    command += ["--max-new-tokens", str(MAX_NEW_TOKENS), "--dtype", "float32", "--no-progress"]
    result = subprocess.run(
        command, env={**os.environ, **VLLM_ENV}, capture_output=True, text=True, timeout=2 * SERVER_START_SECONDS
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served = {row["id"]: row["answer"] for row in read_jsonl(str(answers))}
    assert served == {question["id"]: answer for question, answer in zip(questions, expected)}
    # What is compared are readings: most descriptions name their own chart's type.
    named = sum(described_chart_type(served[f"{entry['stem']}-0"]) == entry["chart_type"] for entry in entries)
    assert named > len(entries) / 2, f"{named} of {len(entries)} chart types named"
    # Most tables begin with their own chart's title line (`TITLE | ...`), read off the image.
    read = sum(served[f"{entry['stem']}-2"].strip().startswith(titles[entry["stem"]]) for entry in entries)
    assert read > len(entries) / 2, f"{read} of {len(entries)} titles read"
