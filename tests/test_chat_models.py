"""
`chartwiz evaluate --model` for models other than ChartWiz: tiny random LLaVA-NeXT and Gemma 3 checkpoints
(`tests/chat_models.py`) asked through their own chat templates and processors, end to end.
"""

import importlib.util
import json
import os
import re

import pytest
import torch
from datasets import Dataset, load_dataset
from PIL import Image as PILImage
from transformers import AutoModelForImageTextToText, AutoProcessor

from chartwiz.batch.questions import DatasetImages
from chartwiz.batch.run import run_inference
from chartwiz.batch.run_store import read_jsonl
from chartwiz.commands.cli import main
from chartwiz.evaluation import instructions as evaluation_instructions
from chartwiz.evaluation.instructions import PRESETS, apply_instructions
from chartwiz.evaluation.metrics import TASKS
from chartwiz.evaluation.prediction import predict_dataset, split_questions
from chartwiz.evaluation.run import evaluate_model
from chartwiz.inference.chat_engines import ChatModelEngine, load_chat_model
from chartwiz.inference.chat_inputs import chat_inputs, prompt_token_ids
from chartwiz.models.tiny import make_tiny_language_model

from .chat_models import ARCHITECTURES, make_tiny_chat_model, missing_architecture
from .conftest import draw_chart
from .test_evaluate import (
    FEATURES,
    charts_dir,  # noqa: F401
    dataset_row,
)


SYSTEM = "차트를 보고 한국어로 답하세요."
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def evaluation_charts(charts_dir):  # noqa: F811
    """`test_evaluate`'s ten synthetic test charts in all four configs."""
    return charts_dir


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def chat_model(request, tmp_path_factory):
    """A tiny checkpoint of each architecture this transformers has: `(name, directory)`."""
    reason = missing_architecture(request.param)
    if reason:
        pytest.skip(reason)
    directory = str(tmp_path_factory.mktemp(request.param))
    return request.param, make_tiny_chat_model(request.param, directory)


def reference_answer(model, processor, conversation, max_new_tokens=MAX_NEW_TOKENS) -> str:
    """One conversation answered alone, its inputs built by the processor's own `apply_chat_template`."""
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def conversation_of(image, question, history=(), system=None):
    """The conversation written out by hand, as a user of the model's processor would."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    turns = [*history, (question, None)]
    for index, (asked, answered) in enumerate(turns):
        content = [{"type": "text", "text": asked}]
        if index == 0:
            content.insert(0, {"type": "image", "image": image})
        messages.append({"role": "user", "content": content})
        if answered is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    return messages


def test_the_inputs_are_those_of_the_models_own_processor(chat_model):
    _, directory = chat_model
    processor = AutoProcessor.from_pretrained(directory)
    images = [draw_chart(320, 240, (3, 7, 5), 0), draw_chart(200, 300, (1, 2, 3, 4), 1), draw_chart(500, 150, (9,), 2)]
    questions = ["가장 큰 값은?", "그럼 합계는 얼마인가요?", "이 차트를 자세히 설명해줘."]
    histories = [(), [("가장 작은 값은?", "1입니다.")], ()]
    batch = chat_inputs(processor, images, questions, histories, SYSTEM)

    for row, (image, question, history) in enumerate(zip(images, questions, histories)):
        expected = processor.apply_chat_template(
            conversation_of(image, question, history, SYSTEM),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        length = expected["input_ids"].shape[1]
        # Left padding only: the row ends with the processor's ids, and only padding comes before them.
        assert torch.equal(batch["input_ids"][row, -length:], expected["input_ids"][0])
        assert int(batch["attention_mask"][row].sum()) == length
        for name, value in expected.items():
            # What runs along the tokens (token types) is left-padded as the ids are; the rest is the chart's.
            got = batch[name][row]
            if value.shape[:2] == expected["input_ids"].shape:
                got = got[-length:]
            elif got.shape != value[0].shape:  # LLaVA-NeXT's tiles, zero-padded to the batch's most
                assert not got[len(value[0]) :].any(), name
                got = got[: len(value[0])]
            assert torch.equal(got, value[0]), name
        # What vLLM is given: the same prompt before the processor expands the chart's placeholder.
        ids = prompt_token_ids(processor, question, history, SYSTEM)
        rendered = processor.apply_chat_template(conversation_of(image, question, history, SYSTEM), tokenize=False)
        assert processor.decode(ids) == rendered + "<|im_start|>assistant\n"
        assert len(ids) < length, "the chart's tokens come on top"


def test_korean_typed_in_decomposed_jamo_is_asked_as_the_composed_syllables(chat_model):
    """Another model's processor does not normalize: the questions sent to it are made NFC, as ChartWiz's are."""
    import unicodedata

    processor = AutoProcessor.from_pretrained(chat_model[1])
    question, history = "가장 큰 값은?", [("가장 작은 값은?", "1입니다.")]
    decomposed = [
        (unicodedata.normalize("NFD", asked), unicodedata.normalize("NFD", answered)) for asked, answered in history
    ]
    composed = chat_inputs(processor, [draw_chart()], [question], [history], SYSTEM)
    typed = chat_inputs(
        processor,
        [draw_chart()],
        [unicodedata.normalize("NFD", question)],
        [decomposed],
        unicodedata.normalize("NFD", SYSTEM),
    )
    assert torch.equal(typed["input_ids"], composed["input_ids"])
    assert prompt_token_ids(processor, unicodedata.normalize("NFD", question)) == prompt_token_ids(processor, question)


def test_a_question_holding_the_image_placeholder_is_refused(chat_model):
    processor = AutoProcessor.from_pretrained(chat_model[1])
    with pytest.raises(ValueError, match="contains"):
        chat_inputs(processor, [draw_chart()], [f"값은 {processor.image_token} 인가요?"])


def test_evaluate_answers_as_the_model_alone_would_and_resumes(chat_model, evaluation_charts, tmp_path, capsys):
    name, directory = chat_model
    out = tmp_path / "report"
    argv = ["evaluate", "--model", directory, "--dataset", evaluation_charts, "--config", "all", "--max-samples", "14"]
    argv += ["--out", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "4"]
    assert main(argv) == 0
    assert "Wrote metrics.json" in capsys.readouterr().out
    split = load_dataset(evaluation_charts, "all", split="test").select(range(14))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n"] == metrics["rows"] == 14 and metrics["skipped"] == []
    assert metrics["model"] == directory
    assert sum(scores["n"] for scores in metrics["by_task"].values()) == 14
    assert (out / "report.md").exists() and (out / "report.png").exists()

    # Each answer is the model's greedy answer to its row alone, built by the processor's own chat template.
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    predictions = {line["id"]: line for line in read_jsonl(str(out / "predictions.jsonl"))}
    questions, images = split_questions(split)[0], DatasetImages(split)
    for question in questions:
        history = [(asked, answer) for _, asked, answer in question.history]
        conversation = conversation_of(images(question)[0], question.question, history)
        assert predictions[question.id]["prediction"] == reference_answer(model, processor, conversation), question.id

    meta = json.loads((out / "answers.meta.json").read_text(encoding="utf-8"))
    assert "instructions" not in meta["settings"] and meta["fingerprints"]["generation"]["system"] is None
    assert "model.safetensors" in meta["fingerprints"]["model"]

    # Interrupted after five answers (the sixth cut mid-line): a rerun keeps those and asks the others only.
    answers_path = out / "answers.jsonl"
    lines = answers_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = json.loads(lines[0])
    kept["answer"] = "written before the interruption"
    answers_path.write_text(json.dumps(kept, ensure_ascii=False) + "\n" + "".join(lines[1:5]) + lines[5][:20])
    assert main(argv) == 0
    resumed = {line["id"]: line["prediction"] for line in read_jsonl(str(out / "predictions.jsonl"))}
    assert resumed[kept["id"]] == "written before the interruption"
    assert {row_id: text for row_id, text in resumed.items() if row_id != kept["id"]} == {
        row_id: line["prediction"] for row_id, line in predictions.items() if row_id != kept["id"]
    }
    assert len(read_jsonl(str(answers_path))) == 14

    # Other instructions are another run: refused, not mixed in.
    assert main([*argv, "--instructions", "formats"]) == 2
    assert "another run (instructions None -> " in capsys.readouterr().err


def test_the_instructions_sent_are_recorded_and_asked(chat_model, evaluation_charts, tmp_path):
    _, directory = chat_model
    instructions = {"system": SYSTEM, "qa": "{question}\n숫자만 답하세요.", "table": PRESETS["formats"]["table"]}
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(instructions, ensure_ascii=False), encoding="utf-8")
    out = str(tmp_path / "report")
    evaluate_model(
        directory, evaluation_charts, out, config="all", max_new_tokens=4, progress=False, instructions=path
    )
    meta = json.loads(open(os.path.join(out, "answers.meta.json"), encoding="utf-8").read())
    assert meta["settings"]["instructions"] == instructions
    assert meta["fingerprints"]["generation"]["system"] == SYSTEM

    split = load_dataset(evaluation_charts, "all", split="test")
    questions, tasks = split_questions(split)
    asked = {row["id"]: row["question"] for row in read_jsonl(os.path.join(out, "answers.jsonl"))}
    assert set(tasks) == {"table", "description", "summary", "qa"}
    for question in questions:
        template = instructions.get(tasks[question.image], "{question}")
        assert asked[question.id] == template.replace("{question}", question.question)

    # The answers are those of the conversation with the system turn and the instructions, answered alone.
    model, processor = load_chat_model(directory)
    first = apply_instructions(questions, tasks, instructions)[0]
    conversation = conversation_of(DatasetImages(split)(first)[0], first.question, (), SYSTEM)
    answers = {row["id"]: row["answer"] for row in read_jsonl(os.path.join(out, "answers.jsonl"))}
    assert answers[first.id] == reference_answer(model, processor, conversation, 4)


def test_blank_charts_and_bad_rows_through_the_models_engine(chat_model, tmp_path):
    _, directory = chat_model
    model, processor = load_chat_model(directory)
    chart = str(tmp_path / "chart.png")
    draw_chart(320, 240).save(chart)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    engine = ChatModelEngine(model, processor, batch_size=4)
    context = model.config.get_text_config().max_position_embeddings
    # A question whose text fits in the context with the answer, but not once the chart's tokens are added: only
    # the engine, which has processed the chart, can tell.
    filler = "값 "
    count = 1
    while len(prompt_token_ids(processor, filler * (count + 1))) + MAX_NEW_TOKENS <= context:
        count += 1
    rows = [
        dataset_row("ok-1", chart),
        dataset_row("broken", str(tmp_path / "broken.png")),
        dataset_row("too-long-with-the-chart", chart, prompt=[{"role": "user", "content": filler * count}]),
        dataset_row("too-long", chart, prompt=[{"role": "user", "content": filler * 3 * count}]),
        dataset_row("ok-2", chart, task="table", answer="TITLE | 비율\nA | 30%"),
    ]
    dataset = Dataset.from_list(rows, features=FEATURES)
    questions, _ = split_questions(dataset)
    answers = str(tmp_path / "answers.jsonl")
    load_image = DatasetImages(dataset)
    summary = run_inference(
        engine, processor, questions, load_image, answers, {}, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    assert (summary.answered, summary.errors) == (2, 3)
    reasons = {row["id"]: row["reason"] for row in read_jsonl(str(tmp_path / "answers.errors.jsonl"))}
    assert "cannot decode the image" in reasons["broken"]
    assert (
        reasons["too-long"].startswith("prompt longer than the context: ")
        and "before the image's own" in reasons["too-long"]
    )
    assert f"the language model's context of {context} tokens" in reasons["too-long-with-the-chart"]
    assert summary.error_kinds == {"image": 1, "too long": 2}
    # The ablation shows the model a white chart of the row's size, through the same engine.
    expected = reference_answer(model, processor, conversation_of(PILImage.new("RGB", (320, 240), "white"), "값은?"))
    out = str(tmp_path / "blank")
    predict_dataset(engine, processor, dataset.select([0]), out, max_new_tokens=MAX_NEW_TOKENS, blank_images=True)
    assert read_jsonl(os.path.join(out, "answers.jsonl"))[0]["answer"] == expected


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--adapter", "lora"], "--adapter applies to ChartWiz checkpoints"),
        (["--vllm-model-impl", "vllm"], "--vllm-model-impl are the vLLM engine's"),
        (["--instructions", "tables"], "--instructions 'tables' is neither a preset"),
    ],
)
def test_bad_arguments_for_another_model(chat_model, evaluation_charts, tmp_path, capsys, extra, message):
    argv = ["evaluate", "--model", chat_model[1], "--dataset", evaluation_charts, "--out", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("chartwiz evaluate: error:") and message in error


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"qa": "숫자만 답하세요."}', "the 'qa' template has no {question}"),
        ('{"chart": "{question}"}', "unknown key(s) 'chart'"),
        ('["{question}"]', "expected a JSON object"),
        ("{oops", "not a JSON object"),
    ],
)
def test_bad_instruction_files_are_refused_before_anything_loads(tmp_path, capsys, content, message):
    path = tmp_path / "instructions.json"
    path.write_text(content, encoding="utf-8")
    argv = ["evaluate", "--model", "m", "--dataset", "d", "--out", str(tmp_path / "r"), "--instructions", str(path)]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("chartwiz evaluate: error:") and message in error and "\n" not in error
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_that_is_no_image_text_to_text_model_is_a_one_line_error(evaluation_charts, tmp_path, capsys):
    text_only = str(tmp_path / "lm")
    make_tiny_language_model(text_only, hidden_size=64)
    argv = ["evaluate", "--model", text_only, "--dataset", evaluation_charts, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    # AutoProcessor gives the tokenizer alone for a checkpoint without an image processor.
    assert error.startswith(f"chartwiz evaluate: error: {text_only}: ")
    assert error.endswith("is not a processor of images with a chat template, which the questions are written in")
    assert not (tmp_path / "r" / "answers.jsonl").exists()


def test_command_constants_match_the_modules():
    from chartwiz.commands import evaluate as evaluate_command
    from chartwiz.serving.chat_engine import MODEL_IMPLS

    assert evaluate_command.INSTRUCTION_PRESETS == tuple(PRESETS)
    assert evaluate_command.VLLM_MODEL_IMPLS == MODEL_IMPLS
    assert set(evaluation_instructions.TASKS) == set(TASKS)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_processor_needing_torchvision_is_a_one_line_error(evaluation_charts, tmp_path, capsys):
    # A checkpoint whose processor is LLaVA-OneVision's, as VARCO-VISION-2.0's: its video processor needs torchvision.
    checkpoint = tmp_path / "onevision-processor"
    make_tiny_chat_model("llava_next", str(checkpoint))
    kind = {"processor_class": "LlavaOnevisionProcessor", "video_processor_type": "LlavaOnevisionVideoProcessor"}
    for file in ("processor_config.json", "video_preprocessor_config.json"):
        path = checkpoint / file
        config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        path.write_text(json.dumps({**config, **kind}), encoding="utf-8")
    argv = ["evaluate", "--model", str(checkpoint), "--dataset", evaluation_charts, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    # transformers 5 names the video processor, 4.57 the Auto class that looked for it.
    assert re.fullmatch(
        f"chartwiz evaluate: error: {re.escape(str(checkpoint))}: its processor cannot be loaded here: "
        r"\w+VideoProcessor requires the Torchvision library but it was not found in your environment",
        error,
    ), error
