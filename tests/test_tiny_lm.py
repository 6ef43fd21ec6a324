"""The tiny pretrained language model shipped in `examples/tiny-lm`: what it is, that it speaks the datasets' language
on charts it never saw, and that `chartwiz compose` joins it to the tiny DePlot unchanged."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from chartwiz.commands.cli import main as chartwiz
from chartwiz.models.tiny import build_tiny_tokenizer, make_tiny_language_model
from dataset_builder.synth import make_chart


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LM = os.path.join(REPO, "examples", "tiny-lm")
TINY_DEPLOT = os.path.join(REPO, "examples", "tiny-deplot")
# Seed 0 is the quickstart's: texts the language model never saw (it learnt those of seed 1).
HELD_OUT_SEED = 0


def held_out_tables(count: int) -> list[str]:
    return [make_chart(index, HELD_OUT_SEED, test_fraction=0.05).expected_table for index in range(count)]


@pytest.fixture(scope="module")
def language_model():
    return AutoModelForCausalLM.from_pretrained(TINY_LM, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_LM)


def test_a_llama_with_heads_of_32_in_safetensors_under_five_megabytes(language_model):
    assert os.path.getsize(os.path.join(TINY_LM, "model.safetensors")) < 5 * 1024 * 1024
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in os.listdir(TINY_LM))
    assert isinstance(language_model, LlamaForCausalLM)
    with open(os.path.join(TINY_LM, "config.json"), encoding="utf-8") as file:
        assert json.load(file)["architectures"] == ["LlamaForCausalLM"]
    assert language_model.config.head_dim == 32, "heads of 32, as vLLM's CPU attention takes"
    # Every tensor of the saved file is a weight of the model: nothing left out, nothing random at load.
    assert set(load_file(os.path.join(TINY_LM, "model.safetensors"))) == set(language_model.state_dict())
    readme = open(os.path.join(TINY_LM, "README.md"), encoding="utf-8").read()
    assert "examples/pretrain_tiny_lm.py" in readme


def test_its_tokenizer_learnt_the_datasets_language(tokenizer):
    tables = held_out_tables(50)
    built_in = build_tiny_tokenizer(vocab_size=len(tokenizer))
    ours = sum(len(tokenizer(table, add_special_tokens=False).input_ids) for table in tables)
    theirs = sum(len(built_in(table, add_special_tokens=False).input_ids) for table in tables)
    # Measured: 0.58 of the built-in tokenizer's tokens on these tables.
    assert ours < 0.7 * theirs, (ours, theirs)
    assert all(tokenizer.decode(tokenizer(table).input_ids, skip_special_tokens=True) == table for table in tables)


@torch.no_grad()
def test_it_predicts_held_out_tables_far_better_than_the_same_model_untrained(language_model, tokenizer):
    tables = held_out_tables(20)
    batch = tokenizer([table + tokenizer.eos_token for table in tables], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    trained = language_model(**batch, labels=labels).loss.item()
    torch.manual_seed(0)
    untrained = LlamaForCausalLM(language_model.config).eval()(**batch, labels=labels).loss.item()
    # Measured: 1.84 nats per token against 6.89 (a uniform guess over 1,000 tokens is 6.91); the values of a table
    # are what only its chart can tell.
    assert trained < 0.4 * untrained, (trained, untrained)


def test_chartwiz_compose_joins_it_to_the_tiny_deplot_unchanged(tmp_path):
    out = str(tmp_path / "chartwiz")
    command = ["compose", "--vision", TINY_DEPLOT, "--text", TINY_LM, "--out", out, "--max-patches", "256"]
    assert chartwiz(command) == 0
    from chartwiz_hf import ChartWizForConditionalGeneration, ChartWizProcessor

    model = ChartWizForConditionalGeneration.from_pretrained(out)
    shipped = load_file(os.path.join(TINY_LM, "model.safetensors"))
    joined = {f"model.{key}": value for key, value in model.model.language_model.state_dict().items()}
    joined["lm_head.weight"] = model.lm_head.weight
    assert joined.keys() == shipped.keys()
    assert all(torch.equal(joined[key], shipped[key].to(joined[key].dtype)) for key in shipped)
    # Its tokenizer, with the image placeholder ChartWiz splices the chart's features into.
    processor = ChartWizProcessor.from_pretrained(out)
    tables = held_out_tables(5)
    tokenizer = AutoTokenizer.from_pretrained(TINY_LM)
    for table in tables:
        assert processor.tokenizer(table).input_ids == tokenizer(table).input_ids
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


@pytest.mark.parametrize("initializer_range", [0.02, 0.1])
def test_the_language_model_starts_from_the_initial_weights_asked_for(initializer_range, tmp_path):
    model, _ = make_tiny_language_model(str(tmp_path), hidden_size=128, initializer_range=initializer_range)
    assert model.config.initializer_range == initializer_range
    saved = LlamaForCausalLM.from_pretrained(tmp_path)
    for name in ("q_proj", "k_proj", "o_proj"):
        weight = getattr(saved.model.layers[0].self_attn, name).weight
        assert abs(weight.std().item() - initializer_range) < 0.1 * initializer_range, (name, weight.std().item())
