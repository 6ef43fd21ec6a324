import hashlib
import io
import json
import os
from collections import Counter

import pytest
from datasets import Dataset, Features, Image, List, Value, load_dataset
from PIL import Image as PILImage

from chartwiz.batch.questions import DatasetImages
from chartwiz.commands import evaluate as evaluate_command
from chartwiz.commands.cli import main
from chartwiz.evaluation.metrics import DEFAULT_BLEU_TOKENIZE
from chartwiz.evaluation.prediction import predict_dataset, shuffled_charts, split_questions
from chartwiz.evaluation.run import evaluate_model
from chartwiz.evaluation.scoring import score_run
from chartwiz.inference import engines
from chartwiz.inference.engines import load_model_for_inference
from dataset_builder.build import build_dataset
from dataset_builder.rows import INSTRUCTIONS
from dataset_builder.synth import generate

from .conftest import draw_chart


@pytest.fixture(scope="module")
def charts_dir(tmp_path_factory):
    """Ten synthetic test charts (one of each type) built into the pretrain, finetune, gpt and all configs."""
    root = tmp_path_factory.mktemp("evaluate-data")
    raw, out = str(root / "synth"), str(root / "charts")
    generate(raw, 20, seed=3, test_fraction=0.5, progress=False)
    build_dataset(raw, out, gpt_sources=[os.path.join(raw, "gpt_qa.jsonl")], num_proc=1)
    return out


def read_lines(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def fingerprint(image, question, history):
    """What the model is shown and asked: the chart's pixels, the question and the earlier turns."""
    pixels = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:12]
    return f"{pixels}|{image.size}|{question}|{list(map(tuple, history))}"


def row_fingerprint(row, question=None):
    prompt = row["prompt"]
    history = [(prompt[i]["content"], prompt[i + 1]["content"]) for i in range(0, len(prompt) - 1, 2)]
    return fingerprint(row["image"], question or prompt[-1]["content"], history)


@pytest.fixture()
def fake_generation(monkeypatch):
    """
    `chartwiz infer`'s engine with the model's answers replaced by a fingerprint of what it was shown and asked;
    every generated batch is recorded.
    """
    batches = []

    def prepare_inputs(processor, images, questions, histories):
        return [fingerprint(*inputs) for inputs in zip(images, questions, histories)]

    def generate_answers(model, processor, inputs, max_new_tokens, **generate_kwargs):
        batches.append(list(inputs))
        return list(inputs)

    monkeypatch.setattr(engines, "prepare_inputs", prepare_inputs)
    monkeypatch.setattr(engines, "generate_answers", generate_answers)
    return batches


@pytest.mark.slow
def test_evaluate_scores_every_row_of_the_split(tiny_dir, charts_dir, tmp_path, capsys):
    out = tmp_path / "report"
    arguments = ["--model", tiny_dir, "--dataset", charts_dir, "--config", "all", "--out", str(out)]
    assert main(["evaluate", *arguments, "--batch-size", "16", "--max-new-tokens", "4"]) == 0
    split = load_dataset(charts_dir, "all", split="test")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))

    assert metrics["n"] == metrics["rows"] == len(split) and metrics["skipped"] == []
    assert metrics["blank_images"] is False
    assert (metrics["model"], metrics["dataset"], metrics["config"], metrics["split"]) == (
        tiny_dir,
        charts_dir,
        "all",
        "test",
    )
    tasks = Counter(split["task"])
    assert {task: scores["n"] for task, scores in metrics["by_task"].items()} == tasks
    assert set(tasks) == {"table", "description", "summary", "qa"}
    by_type = Counter(zip(split["chart_type"], split["task"]))
    assert len({chart_type for chart_type, _ in by_type}) == 10
    assert {
        (chart_type, task): scores["n"]
        for chart_type, per_task in metrics["by_chart_type"].items()
        for task, scores in per_task.items()
    } == by_type
    for task, scores in metrics["by_task"].items():
        values = [value for name, value in scores.items() if name != "n"]
        assert len(values) == {"table": 6}.get(task, 2) and all(0 <= value <= 100 for value in values)

    lines = read_lines(out / "predictions.jsonl")
    references = {row["id"]: row["completion"][0]["content"] for row in split}
    assert [line["id"] for line in lines] == list(references), "every row once, in the split's order"
    assert all(line["reference"] == references[line["id"]] for line in lines)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"Scored: {len(split)} of {len(split)} rows, 0 skipped" in report
    assert "| vertical_bar_stacked |" in report and "### qa" in report
    with PILImage.open(out / "report.png") as chart:
        assert chart.format == "PNG" and chart.width >= 1000
    printed = capsys.readouterr().out
    assert f"qa           n={tasks['qa']}" in printed and "relaxed_accuracy" in printed


@pytest.mark.slow
def test_each_answer_belongs_to_its_row(tiny_dir, charts_dir, tmp_path, fake_generation):
    # Batched longest-first: the answers must still land on the rows, multi-turn history included.
    out = str(tmp_path / "report")
    evaluate_model(tiny_dir, charts_dir, out, config="gpt", batch_size=3, max_new_tokens=8, progress=False)
    split = load_dataset(charts_dir, "gpt", split="test")
    expected = {row["id"]: row_fingerprint(row) for row in split}
    assert {line["id"]: line["prediction"] for line in read_lines(os.path.join(out, "predictions.jsonl"))} == expected
    assert max(len(row["prompt"]) for row in split) >= 3  # some questions did have earlier turns
    assert all(len(batch) <= 3 for batch in fake_generation)
    assert sum(map(len, fake_generation)) == len(split)


def test_pretraining_rows_are_asked_the_table_instruction(tiny_dir, charts_dir, tmp_path, fake_generation):
    out = str(tmp_path / "report")
    metrics = evaluate_model(tiny_dir, charts_dir, out, config="pretrain", max_new_tokens=8, progress=False)
    split = load_dataset(charts_dir, "pretrain", split="test")
    assert all(row["prompt"] == [{"role": "user", "content": ""}] for row in split)
    expected = {row["id"]: row_fingerprint(row, INSTRUCTIONS["table"][0]) for row in split}
    assert {line["id"]: line["prediction"] for line in read_lines(os.path.join(out, "predictions.jsonl"))} == expected
    assert metrics["by_task"]["table"]["n"] == len(split) == 10 and metrics["skipped"] == []


@pytest.mark.slow
def test_an_interrupted_run_resumes_without_asking_twice(tiny_dir, charts_dir, tmp_path, fake_generation):
    out = str(tmp_path / "report")
    answers = os.path.join(out, "answers.jsonl")
    settings = {"config": "finetune", "max_samples": 12, "batch_size": 4, "max_new_tokens": 8, "progress": False}
    evaluate_model(tiny_dir, charts_dir, out, **settings)
    lines = read_lines(answers)
    assert len(lines) == 12 and len(fake_generation) == 3

    # An interruption: five answers written, the sixth cut off mid-line; an answer kept must not be asked again.
    lines[0]["answer"] = "written before the interruption"
    with open(answers, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines[:5])
        file.write(json.dumps(lines[5], ensure_ascii=False)[:20])
    fake_generation.clear()
    metrics = evaluate_model(tiny_dir, charts_dir, out, **settings)

    predictions = {line["id"]: line["prediction"] for line in read_lines(os.path.join(out, "predictions.jsonl"))}
    assert sorted(predictions) == sorted(line["id"] for line in lines) and len(read_lines(answers)) == 12
    assert predictions[lines[0]["id"]] == "written before the interruption"
    asked = sorted(answer for batch in fake_generation for answer in batch)
    assert asked == sorted(predictions[line["id"]] for line in lines[5:])
    assert metrics["n"] == 12 and sum(scores["n"] for scores in metrics["by_task"].values()) == 12

    with pytest.raises(ValueError, match=r"another run \(config 'finetune' -> 'all'\)"):
        evaluate_model(tiny_dir, charts_dir, out, **{**settings, "config": "all"})
    with pytest.raises(ValueError, match=r"another run \(max_new_tokens 8 -> 9\)"):
        evaluate_model(tiny_dir, charts_dir, out, **{**settings, "max_new_tokens": 9})
    with open(answers, "a", encoding="utf-8") as file:
        file.write("not json\n")
    with pytest.raises(ValueError, match=r"answers.jsonl:13: not a JSON line"):
        evaluate_model(tiny_dir, charts_dir, out, **settings)


def _broken_jpeg(path):
    buffer = io.BytesIO()
    draw_chart(160, 120).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[:200])
    return str(path)


MESSAGE = {"role": Value("string"), "content": Value("string")}
FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "chart_type": Value("string"),
        "task": Value("string"),
        "prompt": List(MESSAGE),
        "completion": List(MESSAGE),
    }
)


def dataset_row(row_id, image, task="qa", prompt=None, answer="1"):
    return {
        "id": row_id,
        "image": image,
        "chart_type": "pie",
        "task": task,
        "prompt": prompt if prompt is not None else [{"role": "user", "content": "값은?"}],
        "completion": [{"role": "assistant", "content": answer}],
    }


@pytest.mark.slow
def test_bad_rows_are_skipped_counted_and_reported(tiny_dir, tmp_path):
    good = str(tmp_path / "good.png")
    draw_chart(160, 120).save(good)
    broken = _broken_jpeg(tmp_path / "broken.jpg")
    earlier_turn = [{"role": "user", "content": ""}, {"role": "assistant", "content": "1"}]

    rows = [
        dataset_row("ok-1", good),
        dataset_row("broken-image", broken),
        dataset_row("ends-with-answer", good, prompt=[{"role": "user", "content": "값은?"}, earlier_turn[1]]),
        dataset_row("empty-question", good, prompt=[{"role": "user", "content": " "}]),
        dataset_row("empty-earlier-turn", good, prompt=[*earlier_turn, {"role": "user", "content": "값은?"}]),
        dataset_row("unknown-task", good, task="chart"),
        dataset_row("no-reference", good, answer=" "),
        dataset_row("too-long", good, prompt=[{"role": "user", "content": "가장 큰 값과 작은 값의 차이는 " * 200}]),
        dataset_row("ok-1", good),
        dataset_row("ok-2", good, task="table", answer="TITLE | 비율\nA | 30%"),
    ]
    dataset = Dataset.from_list(rows, features=FEATURES)
    out = str(tmp_path / "report")
    model, processor = load_model_for_inference(tiny_dir)
    summary = predict_dataset(model, processor, dataset, out, max_new_tokens=4, progress=False)
    assert (summary.answered, summary.errors) == (2, 8)

    metrics = score_run(out, rows=len(dataset))
    reasons = {
        entry["source"] if entry["id"] is None or entry.get("repeats") else entry["id"]: entry["reason"]
        for entry in metrics["skipped"]
    }
    assert len(reasons) == len(metrics["skipped"]) == 8
    assert "broken.jpg: cannot decode the image" in reasons["broken-image"]
    assert "end with a user turn" in reasons["ends-with-answer"]
    assert "question is empty" in reasons["empty-question"] and "question is empty" in reasons["empty-earlier-turn"]
    assert "unknown task 'chart'" in reasons["unknown-task"] and "reference answer is empty" in reasons["no-reference"]
    assert reasons["too-long"].startswith("prompt longer than the context")
    assert "id 'ok-1' turn 1 appears again (first at dataset[0])" in reasons["dataset[8]"]
    assert metrics["n"] == 2 and metrics["by_task"]["qa"]["n"] == metrics["by_task"]["table"]["n"] == 1
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "Scored: 2 of 10 rows, 8 skipped" in report and "- `too-long`: prompt longer than the context" in report
    assert "- `dataset[8]`: id 'ok-1' turn 1 appears again" in report

    # Resuming does not ask the skipped rows again, nor report them twice.
    again = predict_dataset(model, processor, dataset, out, max_new_tokens=4, progress=False)
    assert (again.answered, again.errors, again.already_done) == (0, 0, 10)
    assert len(score_run(out)["skipped"]) == 8


@pytest.mark.slow
def test_blank_images_answer_as_white_charts_would(tiny_dir, charts_dir, tmp_path):
    # Long enough answers that the tiny random model's output depends on the chart.
    settings = {"config": "gpt", "max_samples": 8, "max_new_tokens": 12, "progress": False}
    normal = evaluate_model(tiny_dir, charts_dir, str(tmp_path / "normal"), **settings)
    blank = evaluate_model(tiny_dir, charts_dir, str(tmp_path / "blank"), blank_images=True, **settings)
    # The same rows with every chart replaced by a white image of its size by hand, through the same engine.
    split = load_dataset(charts_dir, "gpt", split="test").select(range(8))
    white = split.map(lambda row: {"image": PILImage.new("RGB", row["image"].size, "white")})
    model, processor = load_model_for_inference(tiny_dir)
    predict_dataset(model, processor, white, str(tmp_path / "by-hand"), max_new_tokens=12, progress=False)

    normal_answers, blank_answers, by_hand = (
        {line["id"]: line["prediction"] for line in read_lines(tmp_path / name / "predictions.jsonl")}
        for name in ("normal", "blank", "by-hand")
    )
    assert blank_answers == by_hand and len(blank_answers) == 8
    changed = [row_id for row_id in normal_answers if normal_answers[row_id] != blank_answers[row_id]]
    assert changed, "the chart changes no answer: the ablation would show nothing"
    assert (normal["blank_images"], blank["blank_images"]) == (False, True) and blank["n"] == normal["n"] == 8
    assert "**blank**" in (tmp_path / "blank" / "report.md").read_text(encoding="utf-8")
    assert "blank" not in (tmp_path / "normal" / "report.md").read_text(encoding="utf-8")
    # A blank run cannot be mixed into a normal run's folder, nor the other way round.
    with pytest.raises(ValueError, match=r"another run \(blank_images False -> True\)"):
        evaluate_model(tiny_dir, charts_dir, str(tmp_path / "normal"), blank_images=True, **settings)
    with pytest.raises(ValueError, match=r"another run \(blank_images True -> False\)"):
        evaluate_model(tiny_dir, charts_dir, str(tmp_path / "blank"), **settings)


@pytest.mark.slow
def test_shuffled_images_show_each_row_another_charts_pixels(tiny_dir, charts_dir, tmp_path, fake_generation):
    out = str(tmp_path / "shuffled")
    metrics = evaluate_model(tiny_dir, charts_dir, out, config="all", shuffled_images=True, progress=False)
    split = load_dataset(charts_dir, "all", split="test")
    paths = split.cast_column("image", Image(decode=False))["image"]
    own = {row["id"]: row_fingerprint(row).split("|", 1) for row in split}
    chart_of = {row["id"]: path["path"] for row, path in zip(split, paths)}
    pixels_of = {chart_of[row_id]: pixels for row_id, (pixels, _) in own.items()}
    shown = {
        line["id"]: line["prediction"].split("|", 1) for line in read_lines(os.path.join(out, "predictions.jsonl"))
    }
    assert set(shown) == set(own) and len(set(chart_of.values())) == 10

    seen_by_chart = {}
    for row_id, (pixels, asked) in shown.items():
        # The row's own question and earlier turns, another chart's pixels (of that chart's size).
        assert asked.split("|", 1)[1] == own[row_id][1].split("|", 1)[1]
        assert pixels != own[row_id][0], row_id
        seen_by_chart.setdefault(chart_of[row_id], set()).add(pixels)
    assert all(len(pixels) == 1 for pixels in seen_by_chart.values()), "the rows of one chart see one other chart"
    # A cycle over the charts: every chart is shown exactly once, to the rows of one other chart.
    assert sorted(next(iter(pixels)) for pixels in seen_by_chart.values()) == sorted(pixels_of.values())

    chart_types = {line["id"]: line["chart_type"] for line in read_lines(os.path.join(out, "predictions.jsonl"))}
    assert chart_types == {row["id"]: row["chart_type"] for row in split}, "scores stay grouped by the row's type"
    assert metrics["shuffled_images"] is True and metrics["blank_images"] is False
    assert "**shuffled**" in (tmp_path / "shuffled" / "report.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=r"another run \(shuffled_images True -> False\)"):
        evaluate_model(tiny_dir, charts_dir, out, config="all", progress=False)
    with pytest.raises(ValueError, match="two ablations"):
        evaluate_model(tiny_dir, charts_dir, out, blank_images=True, shuffled_images=True, progress=False)
    first_chart = chart_of[split[0]["id"]]
    one_chart = split.select([index for index, row_id in enumerate(split["id"]) if chart_of[row_id] == first_chart])
    with pytest.raises(ValueError, match="at least two charts"):
        shuffled_charts(DatasetImages(one_chart), one_chart)


@pytest.mark.slow
def test_scoring_a_predictions_file(tmp_path, capsys):
    table = "TITLE | 지역별 인구\n서울 | 950만 명\n부산 | 340만 명"
    good = [
        {"id": "t1", "task": "table", "chart_type": "pie", "prediction": table, "reference": table},
        {"id": "t2", "task": "table", "chart_type": "pie", "prediction": "표를 만들 수 없습니다", "reference": table},
        {"id": "q1", "task": "qa", "chart_type": "line", "prediction": "0.25", "reference": "25%"},
        {"id": "q2", "task": "qa", "prediction": "A사입니다.", "reference": "950만 명입니다."},
        {"id": "d1", "task": "description", "chart_type": "", "prediction": "가 나 다", "reference": "가 나 다"},
    ]
    lines = [json.dumps(record, ensure_ascii=False) for record in good]
    lines += [
        "{not json",
        json.dumps({"id": "x1", "task": "qa", "chart_type": "", "prediction": "1"}),
        json.dumps({"id": "x2", "task": "chart", "chart_type": "", "prediction": "1", "reference": "1"}),
        json.dumps({"id": "q1", "task": "qa", "chart_type": "", "prediction": "1", "reference": "1"}),
        json.dumps({"id": "x3", "task": "qa", "chart_type": "", "prediction": None, "reference": "1"}),
        "",
    ]
    source = tmp_path / "predictions.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "scores"
    assert main(["evaluate", "--predictions", str(source), "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n"] == 5 and metrics["model"] is None
    assert metrics["by_task"]["table"] == {
        "rms_precision": 50.0,
        "rms_recall": 50.0,
        "rms_f1": 50.0,
        "rms_units_f1": 50.0,
        "rms_cells_f1": 50.0,
        "title_match": 50.0,
        "n": 2,
    }
    assert metrics["by_task"]["qa"] == {"relaxed_accuracy": 50.0, "exact_match": 0.0, "n": 2}
    assert metrics["by_task"]["description"]["rouge_l"] == pytest.approx(100)
    assert set(metrics["by_chart_type"]) == {"pie", "line", "unknown"}
    assert metrics["by_chart_type"]["unknown"]["qa"]["n"] == 1
    assert [entry["source"] for entry in metrics["skipped"]] == [f"predictions.jsonl:{n}" for n in (6, 7, 8, 9, 10)]
    reasons = " / ".join(entry["reason"] for entry in metrics["skipped"])
    for expected in ("JSON does not parse", "missing field 'reference'", "unknown task 'chart'", "repeats", "string"):
        assert expected in reasons
    assert (out / "predictions.jsonl").read_text(encoding="utf-8") == source.read_text(encoding="utf-8")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "tok:intl" in metrics["bleu_signature"] and "`predictions.jsonl:6`: JSON does not parse" in report
    assert "5 rows skipped" in capsys.readouterr().out
    # Re-scoring the same file into the same folder is fine; another file would replace its predictions: refused.
    assert main(["evaluate", "--predictions", str(source), "--out", str(out)]) == 0
    other = tmp_path / "other.jsonl"
    other.write_text(lines[0] + "\n", encoding="utf-8")
    assert main(["evaluate", "--predictions", str(other), "--out", str(out)]) == 2
    assert "already holds another predictions.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_predictions_are_checked_against_their_split(charts_dir, tmp_path, capsys):
    split = load_dataset(charts_dir, "finetune", split="test")
    rows = list(split.select_columns(["id", "task", "chart_type", "completion"]))
    lines = [
        {"id": row["id"], "task": row["task"], "chart_type": row["chart_type"], "prediction": "?", "reference": "?"}
        for row in rows[2:]
    ]
    ghosts = [{**lines[0], "id": f"ghost-{index}"} for index in range(2)]
    source = tmp_path / "run" / "predictions.jsonl"
    source.parent.mkdir()
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines + ghosts), "utf-8")
    where = f"{charts_dir} (finetune/test)"
    given = ["--dataset", charts_dir, "--config", "finetune", "--split", "test"]
    # The split given, or the one the predictions' run answered (its settings file beside them).
    (source.parent / "answers.meta.json").write_text(
        json.dumps({"settings": {"dataset": charts_dir, "config": "finetune", "split": "test"}})
    )
    for name, extra in (("given", given), ("recorded", [])):
        out = tmp_path / name
        assert main(["evaluate", "--predictions", str(source), "--out", str(out), *extra]) == 0
        printed = capsys.readouterr().out
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["n"] == len(lines) and metrics["rows"] == len(rows) and metrics["checked_against"] == where
        assert metrics["unknown_ids"] == ["ghost-0", "ghost-1"]
        assert metrics["missing_ids"] == [row["id"] for row in rows[:2]]
        assert f"2 predictions of ids that {where} does not have: ghost-0, ghost-1" in printed
        assert f"2 rows of {where} without a prediction: {rows[0]['id']}, {rows[1]['id']}" in printed
        report = (out / "report.md").read_text(encoding="utf-8")
        assert f"Scored: {len(lines)} of {len(rows)} rows, 4 skipped" in report
        assert f"- `{rows[0]['id']}`: a row of {where} with no prediction" in report
        assert f"- `id ghost-0`: id 'ghost-0' is not a row of {where}: not scored" in report

    # Predictions of no row of the split score nothing: an error, not a report of zeros.
    (source.parent / "answers.meta.json").unlink()
    source.write_text("".join(json.dumps(line) + "\n" for line in ghosts), "utf-8")
    assert main(["evaluate", "--predictions", str(source), "--out", str(tmp_path / "none"), *given]) == 2
    assert "no row was scored: all " in capsys.readouterr().err
    # Without a split to check against, the command says so.
    assert main(["evaluate", "--predictions", str(source), "--out", str(tmp_path / "unchecked")]) == 0
    assert "note: no split to check the predictions' ids against" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--model", "m"], "--model needs --dataset"),
        (["--predictions", "missing.jsonl"], "missing.jsonl: no such predictions file"),
        (["--predictions", "p.jsonl", "--blank-images"], "--blank-images cannot go with it"),
        (["--predictions", "p.jsonl", "--shuffle-images"], "--shuffle-images cannot go with it"),
        (["--model", "m", "--dataset", "d", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "m", "--dataset", "d", "--max-samples", "0"], "--max-samples must be at least 1"),
        (["--model", "m", "--dataset", "d", "--bleu-tokenize", "words"], "Unknown BLEU tokenizer 'words'"),
        (["--predictions", "p.jsonl", "--bleu-tokenize", "words"], "Unknown BLEU tokenizer 'words'"),
    ],
)
def test_bad_arguments_are_one_line_errors(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", *arguments, "--out", "report"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("chartwiz evaluate: error:") and message in error and "\n" not in error


def test_a_missing_dataset_claims_no_report_folder(tiny_dir, tmp_path):
    out = str(tmp_path / "report")
    with pytest.raises(FileNotFoundError):
        evaluate_model(tiny_dir, str(tmp_path / "nowhere"), out, progress=False)
    assert not os.path.exists(out)


def test_split_questions_ask_the_last_user_turn_after_the_earlier_ones(tmp_path):
    image = str(tmp_path / "chart.png")
    draw_chart(160, 120).save(image)
    conversation = [
        {"role": "user", "content": "가장 큰 값은?"},
        {"role": "assistant", "content": "서울입니다."},
        {"role": "user", "content": " 그럼 가장 작은 값은? "},
    ]
    rows = [
        dataset_row("c-3", image, prompt=conversation, answer="부산입니다."),
        dataset_row("p-1", image, task="table", prompt=[{"role": "user", "content": ""}], answer="TITLE | t"),
        dataset_row("q-1", image, prompt=[{"role": "user", "content": ""}]),
    ]
    questions, tasks = split_questions(Dataset.from_list(rows, features=FEATURES))
    assert tasks == ["qa", "table", "qa"]
    first = questions[0]
    assert (first.id, first.turn, first.question, first.reference) == ("c-3", 2, "그럼 가장 작은 값은?", "부산입니다.")
    assert first.history == ((1, "가장 큰 값은?", "서울입니다."),) and first.error is None
    assert (questions[1].question, questions[1].error) == (INSTRUCTIONS["table"][0], None)
    assert questions[2].error == "the question is empty", "only a pretraining (table) row gets the instruction"


def test_command_constants_match_the_modules():
    assert evaluate_command.DEFAULT_BLEU_TOKENIZE == DEFAULT_BLEU_TOKENIZE


@pytest.mark.slow
def test_a_model_replaced_in_place_is_scored_on_its_own_answers(charts_dir, tmp_path, fake_generation):
    model_dir, out = str(tmp_path / "model"), str(tmp_path / "report")
    assert main(["init-tiny", model_dir, "--max-patches", "16", "--seed", "0"]) == 0
    settings = {"config": "finetune", "max_samples": 6, "max_new_tokens": 8, "progress": False}
    evaluate_model(model_dir, charts_dir, out, **settings)
    assert sum(map(len, fake_generation)) == 6
    # The same path now holds a model of the same shapes with other weights: every row is asked again.
    assert main(["init-tiny", model_dir, "--max-patches", "16", "--seed", "5", "--overwrite"]) == 0
    fake_generation.clear()
    evaluate_model(model_dir, charts_dir, out, **settings)
    assert sum(map(len, fake_generation)) == 6, "the old model's answers are not scored as the new one's"
    meta = json.loads(open(os.path.join(out, "answers.meta.json"), encoding="utf-8").read())
    assert "model.safetensors" in meta["fingerprints"]["model"]
    fake_generation.clear()
    evaluate_model(model_dir, charts_dir, out, **settings)
    assert fake_generation == [], "a finished run of the same model is not asked again"

    # --restart starts over with other settings in the same folder.
    with pytest.raises(ValueError, match="another run"):
        evaluate_model(model_dir, charts_dir, out, **{**settings, "max_samples": 3})
    evaluate_model(model_dir, charts_dir, out, **{**settings, "max_samples": 3}, restart=True)
    assert sum(map(len, fake_generation)) == 3 and len(read_lines(os.path.join(out, "predictions.jsonl"))) == 3


def test_a_checkpoint_missing_weights_is_refused_before_any_answer(tiny_dir, charts_dir, tmp_path, capsys):
    from .conftest import damaged_checkpoint

    broken = str(tmp_path / "broken")
    hit = damaged_checkpoint(tiny_dir, broken, drop=2)
    out = tmp_path / "report"
    assert main(["evaluate", "--model", broken, "--dataset", charts_dir, "--out", str(out), "--max-samples", "2"]) == 2
    error = capsys.readouterr().err
    assert "the weights do not fit the model: 2 missing" in error and hit[0] in error
    assert not (out / "answers.jsonl").exists()


def test_predictions_as_a_json_array_score_alike_and_an_empty_file_is_refused(tmp_path, capsys):
    records = [
        {"id": "q1", "task": "qa", "chart_type": "pie", "prediction": "25%", "reference": "25%"},
        {"id": "q2", "task": "qa", "chart_type": "pie", "prediction": "3", "reference": "4"},
    ]
    as_lines, as_array = tmp_path / "p.jsonl", tmp_path / "p.json"
    as_lines.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    as_array.write_text(json.dumps(records, indent=2), encoding="utf-8")  # as `chartwiz infer` also accepts
    scores = []
    for path in (as_lines, as_array):
        assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / path.suffix[1:])]) == 0
        scores.append(json.loads((tmp_path / path.suffix[1:] / "metrics.json").read_text())["by_task"])
    assert scores[0] == scores[1] and scores[0]["qa"]["relaxed_accuracy"] == 50.0
    copied = tmp_path / "json" / "predictions.jsonl"
    assert [json.loads(line) for line in copied.read_text().splitlines()] == records

    capsys.readouterr()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert main(["evaluate", "--predictions", str(empty), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"chartwiz evaluate: error: {empty} holds no prediction to score (0 records could not be read)."
    )
    assert not (tmp_path / "e" / "report.md").exists()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{oops\n", encoding="utf-8")
    assert main(["evaluate", "--predictions", str(broken), "--out", str(tmp_path / "b")]) == 2
    assert "1 records could not be read: broken.jsonl:1: JSON does not parse" in capsys.readouterr().err


def test_a_report_with_no_row_scored_is_well_formed():
    from chartwiz.evaluation.report import render_report

    skipped = [{"id": "a", "source": "dataset[0]", "reason": "no such image file"}]
    report = render_report({"by_task": {}, "by_chart_type": {}, "n": 0, "rows": 1, "skipped": skipped})
    assert "No row was scored" in report and "| task |" not in report and "- `a`: no such image file" in report


def test_both_entry_points_refuse_the_two_image_ablations_through_one_check(monkeypatch, tmp_path):
    from chartwiz.evaluation import prediction
    from chartwiz.evaluation import run as evaluation

    assert evaluation.check_one_ablation is prediction.check_one_ablation
    with pytest.raises(ValueError, match="--blank-images and --shuffle-images are two ablations: choose one"):
        prediction.check_one_ablation(True, True)
    for one in ((False, False), (True, False), (False, True)):
        prediction.check_one_ablation(*one)

    checked = []

    def check(blank_images, shuffled_images):
        checked.append((blank_images, shuffled_images))
        raise ValueError("checked")

    monkeypatch.setattr(evaluation, "check_one_ablation", check)
    monkeypatch.setattr(prediction, "check_one_ablation", check)
    with pytest.raises(ValueError, match="checked"):
        evaluation.evaluate_model("model", "dataset", str(tmp_path), blank_images=True, shuffled_images=True)
    with pytest.raises(ValueError, match="checked"):
        prediction.predict_dataset(None, None, None, str(tmp_path), blank_images=True, shuffled_images=True)
    assert checked == [(True, True), (True, True)]
