"""`make quickstart` (examples/quickstart.py) on a few charts and steps."""

import importlib.util
import json
import os
import sys

import pytest
import torch
from datasets import load_dataset
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer

from chartwiz.commands.cli import main as chartwiz
from chartwiz.models.tiny import build_tiny_tokenizer, dataset_corpus


# The quickstart runs whole steps as a user types them: every test here takes seconds to minutes.
pytestmark = pytest.mark.slow


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARTS = 40
SHIPPED_ROWS = ("shipped", "shipped, blank charts", "shipped, shuffled charts")


def load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(REPO, "examples", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    arguments = ["--out", str(out), "--charts", str(CHARTS), "--num-proc", "1", "--max-steps", "2"]
    result = load_quickstart().main([*arguments, "--max-new-tokens", "8"])
    return str(out), result


def test_every_step_runs_and_each_model_is_scored_on_the_whole_test_split(quickstart, capsys):
    out, result = quickstart
    assert [title.split(" ", 1)[0] for title, _ in result["timings"]] == [f"{n}/14" for n in range(1, 15)]
    test_rows = load_dataset(os.path.join(out, "charts"), "all", split="test")
    expected = {}
    for task in test_rows["task"]:
        expected[task] = expected.get(task, 0) + 1
    reports = ("untrained", "trained", "blank-charts", "shuffled-charts", "shipped", "shipped-blank-charts")
    for name in (*reports, "shipped-shuffled-charts"):
        with open(os.path.join(out, "reports", name, "metrics.json"), encoding="utf-8") as file:
            by_task = json.load(file)["by_task"]
        assert {task: scores["n"] for task, scores in by_task.items()} == expected, name
        assert os.path.isfile(os.path.join(out, "reports", name, "report.md"))
    assert set(result["metrics"]) == {"untrained", "trained", "blank charts", "shuffled charts", *SHIPPED_ROWS}


def test_the_table_compares_the_models_and_the_chart_types(quickstart):
    out, result = quickstart
    table = load_quickstart().comparison_table(result["metrics"]).splitlines()
    assert table[0] == (
        "| model | rms_f1 (table) | rms_units_f1 (table) | relaxed_accuracy (qa) | chart_type_named (description) "
        "| rouge_l (description) |"
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == {"untrained", "trained", "blank charts", "shuffled charts", *SHIPPED_ROWS}
    for name in ("trained", "shipped"):
        by_task = result["metrics"][name]["by_task"]
        assert rows[name].split(" | ")[3] == f"{by_task['qa']['relaxed_accuracy']:.1f}", name
    summary = open(os.path.join(out, "reports", "quickstart.md"), encoding="utf-8").read()
    assert "\n".join(table) in summary and "## By chart type" in summary
    section = summary.split("## By chart type")[1].strip().split("\n\n")
    by_type = next(block for block in section if block.startswith("| ")).splitlines()
    assert len(by_type) == 2 + 10, "a header, a rule and one line per chart type"
    # The shipped model's own section: its three rows side by side, for the same chart types.
    shipped = summary.split("## By chart type, the shipped tiny ChartWiz")[1].strip().split("\n\n")[0].splitlines()
    assert "shipped / shipped, blank charts / shipped, shuffled charts" in shipped[0]
    assert [line.split(" | ")[0] for line in shipped] == [line.split(" | ")[0] for line in by_type]


def test_each_stage_starts_from_the_last_and_the_result_loads_with_the_auto_class(quickstart):
    out, _ = quickstart
    for stage in ("tables", "finetune"):
        with open(os.path.join(out, f"chartwiz-tiny-{stage}", "train_results.json"), encoding="utf-8") as file:
            assert json.load(file)["train_loss"] > 0
    with open(os.path.join(out, "chartwiz-tiny-tables", "chartwiz_run.json"), encoding="utf-8") as file:
        assert json.load(file)["dataset_tasks"] == ["table"], "the first part trains on the table rows alone"
    model = AutoModelForImageTextToText.from_pretrained(os.path.join(out, "chartwiz-tiny-finetune"))
    text = model.config.text_config
    assert text.hidden_size == 128 and text.head_dim == 32, "heads of 32, as vLLM's CPU attention takes"
    # The encoder is the shipped tiny DePlot, frozen in both parts: its weights are the shipped ones.
    shipped = load_file(os.path.join(REPO, "examples", "tiny-deplot", "model.safetensors"))
    encoder = model.model.vision_tower.state_dict()
    assert {f"encoder.{key}" for key in encoder} <= set(shipped)
    assert all(torch.equal(tensor, shipped[f"encoder.{key}"].to(tensor.dtype)) for key, tensor in encoder.items())
    # The language model has the shipped tiny one's shape and tokenizer and new weights (those of `init-tiny --like`,
    # std 0.1), composed as they are and trained in each part.
    tiny = load_file(os.path.join(REPO, "examples", "tiny-lm", "model.safetensors"))
    new = load_file(os.path.join(out, "language-model", "model.safetensors"))
    assert {key: value.shape for key, value in new.items()} == {key: value.shape for key, value in tiny.items()}
    assert not torch.equal(new["model.embed_tokens.weight"], tiny["model.embed_tokens.weight"])
    assert 0.08 < new["model.embed_tokens.weight"].std() < 0.12
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(out, "chartwiz-tiny-finetune"))
    assert (
        tokenizer.get_vocab() == AutoTokenizer.from_pretrained(os.path.join(REPO, "examples", "tiny-lm")).get_vocab()
    )
    stages = {
        stage: AutoModelForImageTextToText.from_pretrained(os.path.join(out, name))
        for stage, name in (
            ("composed", "chartwiz-tiny"),
            ("tables", "chartwiz-tiny-tables"),
            ("mix", "chartwiz-tiny-finetune"),
        )
    }

    def language_model_weights(candidate):
        weights = {f"model.{key}": value for key, value in candidate.model.language_model.state_dict().items()}
        weights["lm_head.weight"] = candidate.lm_head.weight
        assert weights.keys() == new.keys()
        return weights

    def same(first, second):
        return all(torch.equal(first[key], second[key].to(first[key].dtype)) for key in first)

    composed, after_tables, after_mix = (
        language_model_weights(stages[name]) for name in ("composed", "tables", "mix")
    )
    assert same(composed, new)
    assert not same(after_tables, composed) and not same(after_mix, after_tables)


def test_init_tiny_with_a_corpus_learns_the_datasets_language(quickstart, tmp_path):
    out, _ = quickstart
    charts, language_model = os.path.join(out, "charts"), str(tmp_path / "tiny-lm")
    command = ["init-tiny", language_model, "--language-model-only", "--corpus", charts, "--vocab-size", "1000"]
    assert chartwiz(command) == 0
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    assert len(tokenizer) > 900  # 1000 asked; BPE stops early only when the corpus runs out of merges
    built_in = build_tiny_tokenizer(vocab_size=len(tokenizer))
    test_texts = list(dataset_corpus(charts, split="test"))
    assert test_texts, "the test split has texts"
    # Held-out texts: the corpus tokenizer learnt the words of the data, not just the built-in sentences.
    ours = sum(len(tokenizer(text).input_ids) for text in test_texts)
    theirs = sum(len(built_in(text).input_ids) for text in test_texts)
    assert ours < 0.8 * theirs
    assert all(tokenizer.decode(tokenizer(text).input_ids) == text for text in test_texts[:50])


def test_init_tiny_refuses_a_folder_that_is_not_a_built_dataset(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a dataset", encoding="utf-8")
    assert chartwiz(["init-tiny", str(tmp_path / "model"), "--corpus", str(tmp_path)]) == 2
    assert "chartwiz init-tiny: error:" in capsys.readouterr().err
    assert chartwiz(["init-tiny", str(tmp_path / "model"), "--hidden-size", "60"]) == 2
    assert "hidden_size must be a multiple of 32 (the width of an attention head), got 60" in capsys.readouterr().err
    assert chartwiz(["init-tiny", str(tmp_path / "model"), "--vocab-size", "100"]) == 2
    assert "vocab_size must be at least 259 (the 256 bytes and 3 special tokens), got 100" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_progress_is_kept_per_settings_and_a_failed_step_stays_unfinished(tmp_path, capsys):
    quickstart = load_quickstart()
    settings = {"charts": 40, "max_steps": 2, "max_new_tokens": 8}
    progress = quickstart.Progress(str(tmp_path), settings)
    progress.run("1/11 Works", [sys.executable, "-c", "print('ok')"])
    with pytest.raises(SystemExit) as failure:
        progress.run("2/11 Fails", [sys.executable, "-c", "raise SystemExit(3)"])
    assert failure.value.code == 3
    assert "quickstart: error: step 2/11 failed (exit status 3)" in capsys.readouterr().err

    again = quickstart.Progress(str(tmp_path), settings)
    assert again.done == ["1/11"] and not again.is_new("2/11") and again.is_new("3/11")
    again.run("1/11 Works", [sys.executable, "-c", "raise SystemExit(5)"])  # finished before: not run again
    assert again.timings == []
    other_settings = quickstart.Progress(str(tmp_path), {**settings, "charts": 41})
    assert other_settings.done == [] and other_settings.is_new("1/11") and other_settings.is_new("2/11")
    restarted = quickstart.Progress(str(tmp_path), settings, restart=True)
    assert restarted.done == [] and restarted.is_new("2/11")


def test_rerunning_an_interrupted_quickstart_continues_where_it_stopped(quickstart):
    out, first = quickstart
    progress_file = os.path.join(out, "quickstart.json")
    with open(progress_file, encoding="utf-8") as file:
        state = json.load(file)
    assert state["done"] == [f"{n}/14" for n in range(1, 15)]
    # As if killed during the evaluation of the shipped model on shuffled charts: it started, it did not finish.
    state["done"] = state["done"][:12]
    with open(progress_file, "w", encoding="utf-8") as file:
        json.dump(state, file)
    trained = os.path.join(out, "chartwiz-tiny-finetune", "model.safetensors")
    stamp = os.stat(trained).st_mtime_ns

    arguments = ["--out", out, "--charts", str(CHARTS), "--num-proc", "1", "--max-steps", "2"]
    second = load_quickstart().main([*arguments, "--max-new-tokens", "8"])
    assert [title.split(" ", 1)[0] for title, _ in second["timings"]] == ["13/14", "14/14"]
    assert os.stat(trained).st_mtime_ns == stamp, "the trained model was not trained again"
    # The resumed evaluation answered nothing twice: the same rows, the same scores.
    assert second["metrics"] == first["metrics"]


def test_the_same_command_in_another_folder_prints_the_same_table(quickstart, tmp_path):
    out, first = quickstart
    arguments = ["--out", str(tmp_path / "again"), "--charts", str(CHARTS), "--num-proc", "1", "--max-steps", "2"]
    second = load_quickstart().main([*arguments, "--max-new-tokens", "8"])
    # Seeded charts, splits, initialization, data order and one torch thread count: the same weights, the same answers.
    for name in ("chartwiz-tiny", "chartwiz-tiny-finetune"):
        weights = load_file(os.path.join(out, name, "model.safetensors"))
        again = load_file(str(tmp_path / "again" / name / "model.safetensors"))
        assert weights.keys() == again.keys() and all(torch.equal(weights[key], again[key]) for key in weights), name
    assert second["metrics"] == first["metrics"]
    table = load_quickstart().comparison_table
    assert table(second["metrics"]) == table(first["metrics"])


def test_a_finished_step_whose_output_changed_runs_again_with_the_steps_after_it(tmp_path, capsys):
    quickstart = load_quickstart()
    settings = {"charts": 40, "max_steps": 2, "max_new_tokens": 8}
    outputs = {step: str(tmp_path / step.replace("/", "-")) for step in ("1/9", "2/9", "3/9")}

    def write(step):
        folder = outputs[step]
        return [
            sys.executable,
            "-c",
            f"import os; os.makedirs({folder!r}, exist_ok=True); open({folder!r} + '/f', 'w')",
        ]

    progress = quickstart.Progress(str(tmp_path), settings, outputs=outputs)
    for step in outputs:
        progress.run(f"{step} Step", write(step))
    assert quickstart.Progress(str(tmp_path), settings, outputs=outputs).done == ["1/9", "2/9", "3/9"]

    with open(os.path.join(outputs["2/9"], "f"), "w", encoding="utf-8") as file:
        file.write("changed by hand")
    capsys.readouterr()
    again = quickstart.Progress(str(tmp_path), settings, outputs=outputs)
    assert again.done == ["1/9"] and again.is_new("2/9") and again.is_new("3/9")
    assert f"step 2/9: {outputs['2/9']} changed since it was made" in capsys.readouterr().out
    for step in ("2/9", "3/9"):
        again.run(f"{step} Step", write(step))
    assert [title.split(" ")[0] for title, _ in again.timings] == ["2/9", "3/9"]
    assert quickstart.Progress(str(tmp_path), settings, outputs=outputs).done == ["1/9", "2/9", "3/9"]
