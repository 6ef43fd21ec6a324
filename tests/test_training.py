"""The training helpers of `chartwiz.training` on their own, without a training run (test_recipes.py runs them)."""

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from chartwiz import training


def write_checkpoint(path, state=True, weights=True):
    path.mkdir(parents=True)
    if weights:
        save_file({"w": torch.zeros(4)}, str(path / "model.safetensors"))
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return path


def test_checkpoint_problem_names_what_a_kill_while_saving_leaves(tmp_path):
    assert training.checkpoint_problem(str(write_checkpoint(tmp_path / "ok"))) is None
    assert training.checkpoint_problem(str(write_checkpoint(tmp_path / "no-state", state=False))) == (
        "it has no trainer_state.json"
    )
    assert training.checkpoint_problem(str(write_checkpoint(tmp_path / "no-weights", weights=False))) == (
        "it holds no safetensors weights"
    )
    torn = write_checkpoint(tmp_path / "torn")
    data = (torn / "model.safetensors").read_bytes()
    (torn / "model.safetensors").write_bytes(data[: len(data) - 4])
    assert training.checkpoint_problem(str(torn)).startswith("its model.safetensors does not load")
    sharded = write_checkpoint(tmp_path / "sharded")
    index = {"weight_map": {"w": "model.safetensors", "v": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert training.checkpoint_problem(str(sharded)) == "its weights shard model-00002-of-00002.safetensors is missing"


def test_newest_complete_checkpoint_skips_newer_broken_ones_by_step_not_name(tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-9")
    write_checkpoint(tmp_path / "checkpoint-10")
    write_checkpoint(tmp_path / "checkpoint-12", state=False)
    (tmp_path / "checkpoint-13.tmp").mkdir()
    with caplog.at_level(logging.WARNING, logger=training.__name__):
        assert training.newest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-12" in caplog.text and "no trainer_state.json" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert training.newest_complete_checkpoint(str(empty)) is None


def run_args(output_dir, overwrite=False, resume=None):
    return SimpleNamespace(output_dir=str(output_dir), overwrite_output_dir=overwrite, resume_from_checkpoint=resume)


def test_the_same_run_resumes_another_is_refused_and_overwrite_starts_over(tmp_path):
    output_dir = tmp_path / "out"
    definition = {
        "model_name_or_path": "tiny",
        "dataset_config": "pretrain",
        "tune": "projector",
        "model_fingerprint": {"a": 1},
    }
    assert training.find_resume_checkpoint(run_args(output_dir), definition) is None, "nothing there yet"
    training.start_run(SimpleNamespace(process_index=0, **vars(run_args(output_dir))), definition)
    write_checkpoint(output_dir / "checkpoint-2")
    assert training.find_resume_checkpoint(run_args(output_dir), definition) == str(output_dir / "checkpoint-2")

    other = {**definition, "dataset_config": "gpt"}
    with pytest.raises(training.RecipeError, match=r"holds a different run \(dataset_config: 'pretrain' there"):
        training.find_resume_checkpoint(run_args(output_dir), other)
    moved = {**definition, "model_fingerprint": {"a": 2}}
    with pytest.raises(training.RecipeError, match="same settings, but the files of tiny changed"):
        training.find_resume_checkpoint(run_args(output_dir), moved)
    assert training.find_resume_checkpoint(run_args(output_dir, overwrite=True), other) is None

    training.start_run(SimpleNamespace(process_index=0, **vars(run_args(output_dir, overwrite=True))), other)
    assert not (output_dir / "checkpoint-2").exists(), "starting over removes the old run's checkpoints"
    assert json.loads((output_dir / training.RUN_FILE).read_text())["dataset_config"] == "gpt"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(training.RecipeError, match=f"has no {training.RUN_FILE}"):
        training.find_resume_checkpoint(run_args(foreign), definition)


def test_overwrite_output_dir_leaves_nothing_of_the_old_run_and_never_empties_a_folder_of_other_files(tmp_path):
    definition = {"model_name_or_path": "tiny", "dataset_config": "pretrain", "tune": "projector"}
    output_dir = tmp_path / "out"
    training.start_run(SimpleNamespace(process_index=0, **vars(run_args(output_dir))), definition)
    write_checkpoint(output_dir / "checkpoint-2")
    # What an earlier LoRA run ended with: beside a new run's full weights, its adapter would be loaded too.
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "train_results.json"):
        (output_dir / name).write_text("{}")
    other = {**definition, "tune": "projector_and_language_model"}
    assert training.find_resume_checkpoint(run_args(output_dir, overwrite=True), other) is None
    training.start_run(SimpleNamespace(process_index=0, **vars(run_args(output_dir, overwrite=True))), other)
    assert sorted(p.name for p in output_dir.iterdir()) == [training.RUN_FILE]

    # A saved model without a run file is replaced only when told; a folder of other files never is.
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text("{}")
    with pytest.raises(training.RecipeError, match="pass --overwrite_output_dir to replace what it holds"):
        training.find_resume_checkpoint(run_args(saved), definition)
    assert training.find_resume_checkpoint(run_args(saved, overwrite=True), definition) is None
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(training.RecipeError, match="not a run of this script, nor a saved model"):
        training.find_resume_checkpoint(run_args(notes, overwrite=True), definition)
    assert (notes / "notes.txt").read_text() == "mine"


def lengths_dataset(lengths):
    return Dataset.from_dict({"id": [f"row-{i}" for i in range(len(lengths))], "length": lengths})


def test_check_lengths_refuses_names_or_reports_rows_by_their_ids(caplog):
    dataset = lengths_dataset([10, 50, 20])
    prompts = np.array([5, 30, 8])
    with pytest.raises(training.RecipeError, match=r"1 train rows are longer .* 40 tokens .*row 1 \(id row-1\): 50"):
        training.check_lengths(dataset, prompts, "train", context=40, max_length=None)
    with pytest.raises(training.RecipeError, match=r"prompt .* longer than max_length=25.*row 1 \(id row-1\): 30"):
        training.check_lengths(dataset, prompts, "train", context=40, max_length=25)
    with caplog.at_level(logging.WARNING, logger=training.__name__):
        training.check_lengths(dataset, prompts, "eval", context=60, max_length=40)
    assert "1 of 3 eval rows are longer than max_length=40" in caplog.text and "row-1" in caplog.text
    training.check_lengths(dataset, prompts, "train", context=60, max_length=None)  # everything fits


def byte_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    vocab = {"<s>": 0, "a": 1, "b": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<s>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>")


def test_tokenizer_prefix_is_what_the_tokenizer_puts_before_text():
    assert training.tokenizer_prefix(byte_tokenizer(bos=True)) == [0]
    assert training.tokenizer_prefix(byte_tokenizer(bos=False)) == []


def part(name: str) -> str:
    return name.removeprefix("model.").split(".")[0]


def test_set_trainable_freezes_what_tune_leaves_out(tiny):
    model = tiny[0]
    for tune, trained in {
        "projector": {"multi_modal_projector"},
        "projector_and_language_model": {"multi_modal_projector", "language_model", "lm_head"},
        "all": {"multi_modal_projector", "language_model", "lm_head", "vision_tower"},
    }.items():
        training.set_trainable(model, tune)
        parts = {part(name) for name, p in model.named_parameters() if p.requires_grad}
        frozen = {part(name) for name, p in model.named_parameters() if not p.requires_grad}
        assert parts == trained and not parts & frozen, tune
