import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
)

from chartwiz.commands.cli import main
from chartwiz.models.tiny import tiny_configs, train_byte_level_bpe
from chartwiz_hf.chat_templates import load_chat_template

from .conftest import assert_same_answers_under_the_other_major, draw_chart, pix2struct_image_processor


@pytest.fixture(scope="module")
def pretrained_parts(tmp_path_factory):
    """A tiny DePlot-like Pix2Struct checkpoint and a tiny causal LM whose tokenizer has no <image> and no pad."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vision_config, text_config = tiny_configs(vocab_size=600, max_patches=32)
    pix2struct = Pix2StructForConditionalGeneration(
        Pix2StructConfig(
            vision_config=vision_config.to_dict(),
            text_config={"vocab_size": 50, "hidden_size": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2},
        )
    )
    pix2struct.save_pretrained(root / "deplot")
    pix2struct_image_processor(is_vqa=True, max_patches=32).save_pretrained(root / "deplot")

    texts = ["차트의 가장 큰 값은 서울입니다.", "chart table value 1 2 3"]
    tokenizer = train_byte_level_bpe(texts, 400, ["<|endoftext|>"], eos_token="<|endoftext|>")
    assert "<image>" not in tokenizer.get_vocab() and tokenizer.pad_token is None
    language_model = LlamaForCausalLM(tiny_configs(len(tokenizer), tie_word_embeddings=True)[1])
    language_model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return root, pix2struct, language_model


@pytest.mark.slow
def test_compose_joins_pretrained_parts(pretrained_parts, tmp_path, capsys):
    root, pix2struct, language_model = pretrained_parts
    out = tmp_path / "chartwiz"
    code = main(
        [
            "compose",
            "--vision",
            str(root / "deplot"),
            "--text",
            str(root / "lm"),
            "--out",
            str(out),
            "--max-patches",
            "32",
        ]
    )
    assert code == 0
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)

    for name, value in pix2struct.encoder.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    for name, value in language_model.model.state_dict().items():
        if name != "embed_tokens.weight":
            assert torch.equal(model.model.language_model.state_dict()[name], value), name
    old_vocab = language_model.config.vocab_size
    new_embeddings = model.get_input_embeddings().weight
    assert torch.equal(new_embeddings[:old_vocab], language_model.model.embed_tokens.weight)
    assert model.lm_head.weight.data_ptr() == new_embeddings.data_ptr(), "tied embeddings stay tied"

    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert len(tokenizer) == new_embeddings.shape[0] == old_vocab + 1
    assert tokenizer.pad_token == tokenizer.eos_token
    assert processor.chat_template == load_chat_template("synatra_mini")
    assert processor.image_processor.is_vqa and processor.image_seq_length == 32

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "값?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=draw_chart(), text=prompt, return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=2, min_new_tokens=2).shape[1] == inputs["input_ids"].shape[1] + 2
    assert_same_answers_under_the_other_major(out, tmp_path / "other-major")


def test_init_tiny_then_ask_streams_an_answer(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["init-tiny", str(out), "--seed", "3"]) == 0
    image = tmp_path / "chart.jpg"
    draw_chart().save(image)
    assert main(["ask", "--model", str(out), str(image), "가장 큰 값은?", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert "Saved a tiny random ChartWiz" in printed
    assert len(printed.strip().splitlines()) >= 2, "the answer is streamed after the save message"


def test_init_tiny_is_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    main(["init-tiny", str(tmp_path / "a"), "--seed", "7"])
    main(["init-tiny", str(tmp_path / "b"), "--seed", "7"])
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_compose_is_deterministic_for_a_seed(pretrained_parts, tmp_path):
    from safetensors.torch import load_file

    root, _, _ = pretrained_parts
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert main(compose_argv(root / "deplot", root / "lm", tmp_path / name, "--seed", seed)) == 0
    first, second, other = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert all(torch.equal(first[key], second[key]) for key in first)
    # Only what is new depends on the seed, the projector and the embedding row of `<image>`: the parts' own weights
    # are the parts'.
    changed = {key for key in first if not torch.equal(first[key], other[key])}
    embeddings = "model.language_model.embed_tokens.weight"
    assert {key for key in changed if "multi_modal_projector" not in key} == {embeddings}
    assert torch.equal(first[embeddings][:-1], other[embeddings][:-1])
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    compose_chartwiz_in_process(root, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state), "a seeded compose leaves torch's random state alone"


def compose_chartwiz_in_process(root, seed):
    from chartwiz_hf.compose import compose_chartwiz

    return compose_chartwiz(str(root / "deplot"), str(root / "lm"), max_patches=32, seed=seed)


def test_init_tiny_language_model_only_is_a_text_for_compose(pretrained_parts, tmp_path, capsys):
    root, pix2struct, _ = pretrained_parts
    language_model, out = tmp_path / "lm", tmp_path / "chartwiz"
    assert main(["init-tiny", str(language_model), "--language-model-only", "--hidden-size", "96", "--seed", "2"]) == 0
    assert "chartwiz compose --vision DIR --text" in capsys.readouterr().out
    config = json.loads((language_model / "config.json").read_text(encoding="utf-8"))
    # Attention heads of 32, which vLLM's CPU attention takes: three of them in a width of 96.
    assert config["model_type"] == "llama" and config["head_dim"] == 32 and config["num_attention_heads"] == 3
    assert not (language_model / "preprocessor_config.json").exists()
    assert main(compose_argv(root / "deplot", language_model, out)) == 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.text_config.head_dim == 32
    for name, value in pix2struct.encoder.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    assert main(["init-tiny", str(tmp_path / "odd"), "--language-model-only", "--hidden-size", "80"]) == 2
    assert "hidden_size must be a multiple of head_dim=32" in capsys.readouterr().err


def test_init_tiny_like_makes_new_weights_of_a_language_models_shape_and_tokenizer(tmp_path, capsys):
    pretrained = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "tiny-lm")
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        argv = ["init-tiny", str(folder), "--language-model-only", "--like", pretrained, "--initializer-range", "0.1"]
        assert main(argv) == 0
    assert "shape and tokenizer with new weights (std 0.1, seed 0" in capsys.readouterr().out
    reference = AutoModelForCausalLM.from_pretrained(pretrained)
    made = AutoModelForCausalLM.from_pretrained(first)
    for name in ("hidden_size", "head_dim", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert getattr(made.config, name) == getattr(reference.config, name), name
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(pretrained).get_vocab()
    weights, pretrained_weights = made.state_dict(), reference.state_dict()
    assert weights.keys() == pretrained_weights.keys()
    embeddings = weights["model.embed_tokens.weight"]
    assert not torch.equal(embeddings, pretrained_weights["model.embed_tokens.weight"]), "new weights, not its own"
    assert abs(embeddings.std().item() - 0.1) < 0.01
    again = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(weights[key], again[key]) for key in weights), "the same seed, the same weights"
    # Options that need the language model alone, or that contradict --like, are refused before anything is written.
    assert main(["init-tiny", str(tmp_path / "full"), "--like", pretrained]) == 2
    assert "add --language-model-only" in capsys.readouterr().err
    argv = ["init-tiny", str(tmp_path / "both"), "--language-model-only", "--like", pretrained, "--corpus", str(first)]
    assert main(argv) == 2
    assert "--corpus would train another" in capsys.readouterr().err
    assert not (tmp_path / "full").exists() and not (tmp_path / "both").exists()


@pytest.mark.slow
def test_compose_generates_with_the_cache_a_trained_language_model_left_off(pretrained_parts, tmp_path):
    root, _, language_model = pretrained_parts
    # As a training run with gradient checkpointing saves it.
    trained = tmp_path / "trained-lm"
    language_model.config.use_cache = False
    try:
        language_model.save_pretrained(trained)
    finally:
        language_model.config.use_cache = True
    AutoTokenizer.from_pretrained(root / "lm").save_pretrained(trained)
    assert json.loads((trained / "config.json").read_text(encoding="utf-8"))["use_cache"] is False
    out = tmp_path / "chartwiz"
    assert main(compose_argv(root / "deplot", trained, out)) == 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.text_config.use_cache and model.generation_config.use_cache
    prompt = torch.tensor([[5, 6, 7]])
    cached = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert cached.past_key_values is not None, "generation kept a key/value cache"


def test_ask_rejects_bad_input_with_a_message(tiny_dir, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["ask", "--model", tiny_dir, str(corrupt), "값?"]) == 2
    assert "corrupt.jpg: cannot decode" in capsys.readouterr().err
    image = tmp_path / "chart.png"
    draw_chart().save(image)
    assert main(["ask", "--model", tiny_dir, str(image), "  "]) == 2
    assert "question is empty" in capsys.readouterr().err
    assert main(["ask", "--model", tiny_dir, str(tmp_path / "nope.png"), "값?"]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_compose_with_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "compose",
            "--vision",
            str(tmp_path / "no-deplot"),
            "--text",
            str(tmp_path / "no-lm"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "no-deplot" in capsys.readouterr().err


def test_errors_name_the_sub_command_that_failed(tmp_path, capsys):
    assert main(["data", "build", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("chartwiz data build: error: ")


def compose_argv(vision, text, out, *extra):
    return ["compose", "--vision", str(vision), "--text", str(text), "--out", str(out), "--max-patches", "32", *extra]


def test_compose_refuses_parts_of_the_wrong_kind(pretrained_parts, tmp_path, capsys):
    root, _, _ = pretrained_parts
    assert main(compose_argv(root / "lm", root / "lm", tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert error.startswith("chartwiz compose: error: ") and "'llama' model" in error and "Pix2Struct" in error
    assert main(compose_argv(root / "deplot", root / "deplot", tmp_path / "out")) == 2
    assert "'pix2struct' model, not a causal language model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compose_refuses_a_pix2struct_checkpoint_without_the_encoder_weights(pretrained_parts, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    root, _, _ = pretrained_parts
    decoder_only = tmp_path / "decoder-only"
    shutil.copytree(root / "deplot", decoder_only)
    weights = load_file(decoder_only / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("encoder.")}, decoder_only / "model.safetensors")
    assert main(compose_argv(decoder_only, root / "lm", tmp_path / "out")) == 2
    assert "has no weights for" in capsys.readouterr().err


def test_compose_leaves_the_decoder_out_quietly_and_still_reports_a_stray_weight(pretrained_parts, tmp_path, caplog):
    import logging

    from safetensors.torch import load_file, save_file

    from chartwiz_hf.compose import load_pix2struct_encoder

    root, pix2struct, _ = pretrained_parts
    stray = tmp_path / "stray"
    shutil.copytree(root / "deplot", stray)
    weights = load_file(stray / "model.safetensors")
    save_file({**weights, "encoder.stray_head.weight": torch.zeros(2)}, stray / "model.safetensors")
    # transformers' loggers do not propagate to the root logger, where caplog listens; 4.57 tells unexpected weights
    # of a checkpoint of another architecture at INFO, 5.x at WARNING.
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="transformers")
    try:
        encoder = load_pix2struct_encoder(str(root / "deplot"))
        quiet = caplog.text
        caplog.clear()
        load_pix2struct_encoder(str(stray))
        stray_log = caplog.text
    finally:
        transformers_logger.removeHandler(caplog.handler)
    assert "decoder." not in quiet
    assert "stray_head.weight" in stray_log and "decoder." not in stray_log
    for name, tensor in pix2struct.encoder.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_compose_builds_around_the_parts_own_tensors_in_their_dtype(pretrained_parts, tmp_path, monkeypatch, tied):
    import chartwiz_hf.compose as compose

    root, _, _ = pretrained_parts
    # The parts' LM (tied) or an untied one, saved in bfloat16 as most LMs on the Hub are
    language_model = LlamaForCausalLM.from_pretrained(root / "lm", dtype=torch.bfloat16)
    if not tied:
        torch.manual_seed(1)
        config = tiny_configs(language_model.config.vocab_size, tie_word_embeddings=False)[1]
        language_model = LlamaForCausalLM(config).to(torch.bfloat16)
    text_dir = tmp_path / "lm-bf16"
    language_model.save_pretrained(text_dir)
    AutoTokenizer.from_pretrained(root / "lm").save_pretrained(text_dir)
    loaded = []
    real_from_pretrained = compose.AutoModelForCausalLM.from_pretrained

    def recording_from_pretrained(*args, **kwargs):
        loaded.append(real_from_pretrained(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(compose.AutoModelForCausalLM, "from_pretrained", recording_from_pretrained)
    model, processor = compose.compose_chartwiz(str(root / "deplot"), str(text_dir), max_patches=32)

    assert {param.dtype for param in model.parameters()} == {torch.bfloat16}, "the language model's dtype"
    assert not any(param.is_meta for param in model.parameters())
    # The loaded tensors themselves, not copies: composing holds the weights once.
    layer, loaded_layer = model.model.language_model.layers[0], loaded[0].model.layers[0]
    assert layer.mlp.up_proj.weight.data_ptr() == loaded_layer.mlp.up_proj.weight.data_ptr()
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == language_model.config.vocab_size + 1 == len(processor.tokenizer), "<image> added"
    assert (model.lm_head.weight is embeddings) is tied
    assert torch.equal(model.lm_head.weight[:-1], language_model.lm_head.weight)
    projector = model.multi_modal_projector.linear_1.weight
    assert projector.abs().sum() > 0 and torch.isfinite(projector).all(), "the new projector is initialized"


def test_init_tiny_and_compose_refuse_a_non_empty_output_unless_told(pretrained_parts, tmp_path, capsys):
    root, _, _ = pretrained_parts
    out = tmp_path / "checkpoint"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert main(["init-tiny", str(out)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(compose_argv(root / "deplot", root / "lm", out)) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    # --overwrite replaces a checkpoint, never a folder of other files.
    assert main(["init-tiny", str(out), "--overwrite"]) == 2
    assert "holds files that are not a saved model, adapter or training run (notes.txt)" in capsys.readouterr().err
    assert main(compose_argv(root / "deplot", root / "lm", out, "--overwrite")) == 2
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert main(["init-tiny", str(tmp_path / "new")]) == 0


def adapter_folder(tiny_dir, path):
    """A LoRA adapter of the tiny model saved at `path`, with a stray file of the run beside it."""
    from peft import LoraConfig, get_peft_model

    from chartwiz.inference import load_chartwiz

    model, _ = load_chartwiz(tiny_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(path)
    (path / "trainer_state.json").write_text("{}")
    return sorted(os.listdir(path))


def test_overwrite_leaves_exactly_the_new_checkpoints_files(pretrained_parts, tiny_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    root, _, _ = pretrained_parts
    fresh = {"init-tiny": tmp_path / "fresh-tiny", "compose": tmp_path / "fresh-composed"}
    assert main(["init-tiny", str(fresh["init-tiny"]), "--max-patches", "16"]) == 0
    assert main(compose_argv(root / "deplot", root / "lm", fresh["compose"])) == 0
    for command, argv in {
        "init-tiny": lambda out: ["init-tiny", str(out), "--max-patches", "16", "--overwrite"],
        "compose": lambda out: compose_argv(root / "deplot", root / "lm", out, "--overwrite"),
    }.items():
        out = tmp_path / f"{command}-over-an-adapter"
        assert "adapter_config.json" in adapter_folder(tiny_dir, out)
        # What a replacement killed after setting the earlier folder aside leaves: gone with the next one.
        (tmp_path / f".{out.name}.replaced-killed").mkdir()
        assert main(argv(out)) == 0, capsys.readouterr().err
        # An adapter_config.json left beside the new weights would load the adapter on top of them.
        assert sorted(os.listdir(out)) == sorted(os.listdir(fresh[command])), command
        weights, expected = load_file(out / "model.safetensors"), load_file(fresh[command] / "model.safetensors")
        assert all(torch.equal(weights[name], expected[name]) for name in expected)
        assert not [name for name in os.listdir(tmp_path) if ".replaced-" in name], "the old folder is gone"


def test_a_failed_overwrite_puts_the_earlier_checkpoint_back(pretrained_parts, tiny_dir, tmp_path, capsys):
    root, _, _ = pretrained_parts
    out = tmp_path / "adapter"
    before = adapter_folder(tiny_dir, out)
    # The encoder must come from a Pix2Struct checkpoint: the command fails after the folder was set aside.
    assert main(compose_argv(root / "lm", root / "lm", out, "--overwrite")) == 2
    assert "'llama' model" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before and sorted(os.listdir(tmp_path)) == ["adapter"]
    # A folder the command reads is not one it may replace.
    assert main(compose_argv(root / "deplot", out.parent / "adapter", out, "--overwrite")) == 2
    assert f"{out} is (or holds) {out}, which this command reads" in capsys.readouterr().err
    assert main(compose_argv(root / "deplot", root / "lm", root, "--overwrite")) == 2
    assert "which this command reads" in capsys.readouterr().err
    # A new folder of a command that fails is not left behind.
    assert main(compose_argv(root / "lm", root / "lm", tmp_path / "new")) == 2
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def ask_inputs(tiny_dir, tmp_path_factory):
    """A chart, and directories that are not loadable ChartWiz checkpoints."""
    root = tmp_path_factory.mktemp("ask-inputs")
    draw_chart().save(root / "chart.png")
    for name, damage in [
        ("truncated", lambda data: data[: len(data) // 2]),
        ("corrupt", lambda data: b"\xff" * 16 + data[16:]),
    ]:
        shutil.copytree(tiny_dir, root / name)
        weights = root / name / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    shutil.copytree(tiny_dir, root / "no-weights")
    os.remove(root / "no-weights" / "model.safetensors")
    shutil.copytree(tiny_dir, root / "no-text-config")
    config = json.loads((root / "no-text-config" / "config.json").read_text())
    del config["text_config"]
    (root / "no-text-config" / "config.json").write_text(json.dumps(config))
    LlamaConfig(hidden_size=16, num_attention_heads=2).save_pretrained(root / "llama")
    (root / "empty").mkdir()
    return root


# (--model, question, options): what the one-line error must say
ASK_ERRORS = {
    "lone-surrogate": ("{tiny}", "값\udcff?", [], "lone surrogate (U+DCFF)"),
    "image-placeholder": ("{tiny}", "<image> 값?", [], "leave <image> out of the question"),
    "no-new-tokens": ("{tiny}", "값?", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    # The device is checked before the model: the directory does not even exist.
    "cuda-without-cuda": ("{root}/nowhere", "값?", ["--device", "cuda"], "Device 'cuda' is not available"),
    "unknown-device": ("{root}/nowhere", "값?", ["--device", "gpu0"], "Unknown device 'gpu0'"),
    "meta-device": ("{root}/nowhere", "값?", ["--device", "meta"], "Device 'meta' is not one to run a model on"),
    "truncated-weights": ("{root}/truncated", "값?", [], "cannot read the weights"),
    "corrupt-weights": ("{root}/corrupt", "값?", [], "cannot read the weights"),
    "no-text-config": ("{root}/no-text-config", "값?", [], "has no text_config"),
    "not-chartwiz": ("{root}/llama", "값?", [], "holds a 'llama' model, not a ChartWiz model"),
    "no-config": ("{root}/empty", "값?", [], "has no config.json"),
    "no-weights": ("{root}/no-weights", "값?", [], "no-weights: Error no file named "),
    "missing-absolute": ("{root}/nowhere", "값?", [], "nowhere: no such directory"),
    "missing-relative": ("no-such/model-dir", "값?", [], "no-such/model-dir: no such directory"),
}


@pytest.mark.parametrize("case", ASK_ERRORS)
def test_ask_reports_bad_input_in_one_line(case, ask_inputs, tiny_dir, tmp_path, capsys, monkeypatch):
    model, question, options, message = ASK_ERRORS[case]
    model = model.format(tiny=tiny_dir, root=ask_inputs)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["ask", "--model", model, str(ask_inputs / "chart.png"), question, *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith("chartwiz ask: error: ") and message in error, error
    assert error.count("\n") == 1, f"one line, no traceback: {error}"


def question_leaving_room(processor, room: int) -> str:
    """A long question whose prompt leaves at most `room` tokens of the context (and as close to it as it can)."""
    from chartwiz.inference import prepare_inputs

    context, chart, filler = processor.tokenizer.model_max_length, draw_chart(100, 100), "가장 큰 값은 무엇인가요? "

    def length(repeats):
        return prepare_inputs(processor, [chart], [filler * repeats])["input_ids"].shape[1]

    per_repeat = length(2) - length(1)
    repeats = max(1, (context - room - length(1)) // per_repeat)
    while context - length(repeats) > room:
        repeats += 1
    return filler * repeats


def test_ask_fits_the_answer_to_the_context_before_generating(tiny_dir, tmp_path, capsys):
    from chartwiz_hf import ChartWizProcessor

    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    image = tmp_path / "chart.png"
    draw_chart().save(image)
    long_question = question_leaving_room(processor, 12)
    assert main(["ask", "--model", tiny_dir, str(image), long_question, "--max-new-tokens", "200"]) == 0
    captured = capsys.readouterr()
    note = re.search(
        r"note: the prompt takes (\d+) of the model's 1024 context tokens, so at most (\d+)", captured.err
    )
    assert note and int(note.group(1)) + int(note.group(2)) == 1024 and int(note.group(2)) <= 12, captured.err
    assert captured.out.strip(), "the answer is still given"
    too_long = question_leaving_room(processor, 0)
    assert main(["ask", "--model", tiny_dir, str(image), too_long]) == 2
    error = capsys.readouterr().err
    assert re.search(r"error: The prompt is \d+ tokens \(16 of them the chart's\), which leaves no room", error)


def test_answers_that_would_overrun_the_context_are_refused_before_generating(tiny):
    from chartwiz.inference import answer_questions, prepare_inputs

    model, processor = tiny
    chart = draw_chart()
    question = question_leaving_room(processor, 20)
    inputs = prepare_inputs(processor, [chart], [question])
    room = model.config.text_config.max_position_embeddings - inputs["input_ids"].shape[1]
    assert 0 < room <= 20

    class Streamer:
        received = []

        def put(self, value):
            self.received.append(value)

        def end(self):
            pass

    streamer = Streamer()
    with pytest.raises(ValueError, match=f"{room + 5} new tokens would run past .* ask for at most {room} new tokens"):
        answer_questions(model, processor, [chart], [question], max_new_tokens=room + 5, streamer=streamer)
    assert streamer.received == [], "refused before the prompt or any token was streamed"
    from chartwiz.inference import fit_new_tokens

    assert fit_new_tokens(inputs, model.config, room + 50, clamp=True) == room
    assert fit_new_tokens(inputs, model.config, room) == room
    assert len(answer_questions(model, processor, [chart], [question], max_new_tokens=room, min_new_tokens=room)) == 1


@pytest.mark.parametrize(
    "damage, words",
    [
        ({"drop": 4}, "4 missing"),
        ({"reshape": 2}, "2 of another shape"),
        ({"extra": 1}, "1 unexpected (model.unused_0.weight)"),
    ],
)
def test_every_command_refuses_weights_that_do_not_fit_the_model(tiny_dir, tmp_path, capsys, damage, words):
    from .conftest import damaged_checkpoint, draw_chart

    broken = str(tmp_path / "broken")
    hit = damaged_checkpoint(tiny_dir, broken, **damage)
    chart = tmp_path / "chart.png"
    draw_chart().save(chart)
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"id": "a", "image": "chart.png", "text": "값은?"}\n', encoding="utf-8")
    commands = {
        "ask": ["ask", "--model", broken, str(chart), "값은?"],
        "infer": ["infer", "--model", broken, "--questions", str(questions), "--image-folder", str(tmp_path)]
        + ["--answers", str(tmp_path / "answers.jsonl")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        # transformers 5 draws a weight-loading progress bar on stderr first; the error is the last line.
        stderr = capsys.readouterr().err.replace("\r", "\n").strip()
        error = stderr.splitlines()[-1]
        assert "Traceback" not in stderr
        assert error.startswith(f"chartwiz {name}: error: {broken}: the weights do not fit the model: ")
        assert words in error and all(key in error for key in hit[:3])
    assert not (tmp_path / "answers.jsonl").exists()


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path, capsys, monkeypatch):
    argv = ["ask", "--model", str(tmp_path / "nowhere"), str(tmp_path / "chart.png"), "값?"]
    monkeypatch.delenv("CHARTWIZ_DEBUG", raising=False)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error == f"chartwiz ask: error: {tmp_path / 'chart.png'}: no such image file\n"
    for debug_argv, environment in ((argv + ["--debug"], None), (["--debug", *argv], None), (argv, "1")):
        if environment:
            monkeypatch.setenv("CHARTWIZ_DEBUG", environment)
        assert main(debug_argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("Traceback (most recent call last):") and "ChartWizFileNotFoundError" in error
        assert error.endswith(f"chartwiz ask: error: {tmp_path / 'chart.png'}: no such image file\n")


def test_an_error_that_is_not_the_users_keeps_its_traceback(tiny_dir, tmp_path, capsys, monkeypatch):
    image = tmp_path / "chart.png"
    draw_chart().save(image)

    def defect(*args, **kwargs):
        raise ValueError("a defect inside a library")

    # A ValueError or an OSError raised by code, not about what the user gave, is not one line with exit status 2.
    monkeypatch.setattr("chartwiz.inference.prompts.prepare_inputs", defect)
    with pytest.raises(ValueError, match="a defect inside a library"):
        main(["ask", "--model", tiny_dir, str(image), "값?"])
    monkeypatch.setattr(
        "chartwiz.inference.prompts.prepare_inputs", lambda *a, **k: (_ for _ in ()).throw(OSError("no such thing"))
    )
    with pytest.raises(OSError, match="no such thing"):
        main(["ask", "--model", tiny_dir, str(image), "값?"])
    # The system's refusal of a path the user named says which path, in one line.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"id": "a", "image": "chart.png", "text": "값은?"}\n', encoding="utf-8")
    argv = ["infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder", str(tmp_path)]
    capsys.readouterr()
    assert main([*argv, "--answers", str(blocker / "answers.jsonl")]) == 2
    error = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert error.startswith("chartwiz infer: error: ") and str(blocker) in error and "Traceback" not in error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "library", "while_chartwiz_imports"),
    [
        # numpy comes early among the modules `chartwiz` itself imports (through transformers' argument parser).
        (["evaluate", "--help"], "_multiarray_umath", True),
        (["infer", "--model", "m", "--answers", "a", "--questions", "q", "--image-folder", "."], "libtorch", False),
        (["data", "build", "--data-dir", "d", "--out", "o"], "libarrow", False),  # data build loads no torch
    ],
)
def test_ctrl_c_while_the_command_starts_is_one_line(command, library, while_chartwiz_imports, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    # The installed `chartwiz` command, as a terminal's foreground job: Ctrl-C reaches its whole process group.
    executable = os.path.join(os.path.dirname(sys.executable), "chartwiz")
    process = subprocess.Popen(
        [executable, *command],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    maps = f"/proc/{process.pid}/maps"
    deadline = time.monotonic() + 120
    # Once a large library of the command is loaded (torch for infer's questions, Arrow for the build), its imports
    # are under way and more are still to come (transformers; datasets).
    while time.monotonic() < deadline and process.poll() is None:
        with open(maps, encoding="utf-8", errors="replace") as file:
            if library in file.read():
                break
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read()
    os.killpg(process.pid, signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    name = "chartwiz " + " ".join(command[: 2 if command[0] == "data" else 1])
    assert process.returncode == 130, errors
    # One line, whether the interrupt came while `chartwiz` imported its modules or while the command imported its own
    # (then the command's line: what it kept, if anything).
    (line,) = errors.strip().splitlines()
    if while_chartwiz_imports:
        assert line == f"{name}: interrupted while starting; nothing was done", errors
    else:
        assert line.startswith(f"{name}: interrupted"), errors


def test_a_pdf_without_pages_says_so(tiny_dir, tmp_path, capsys):
    import io

    import pypdfium2

    from chartwiz.inference.pdf import pdf_page_count

    buffer = io.BytesIO()
    pypdfium2.PdfDocument.new().save(buffer)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(buffer.getvalue())
    assert main(["ask", "--model", tiny_dir, str(empty), "값?"]) == 2
    error = capsys.readouterr().err
    assert (
        error == f"chartwiz ask: error: {empty} has no pages (PDFium finds no page in it): there is no chart to show\n"
    )
    # The demo's uploads are bytes.
    with pytest.raises(ValueError, match="^the PDF has no pages"):
        pdf_page_count(buffer.getvalue())


@pytest.mark.slow
def test_a_question_longer_than_the_context_gets_chartwiz_s_error_and_no_tokenizer_warning(tiny_dir, tmp_path):
    import subprocess
    import sys

    draw_chart().save(tmp_path / "chart.png")
    question = "가장 큰 값은? " * 700  # over 5,000 characters
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "long", "image": "chart.png", "text": question}) + "\n", encoding="utf-8")
    executable = os.path.join(os.path.dirname(sys.executable), "chartwiz")
    runs = {
        "ask": [executable, "ask", "--model", tiny_dir, str(tmp_path / "chart.png"), question],
        "infer": [executable, "infer", "--model", tiny_dir, "--questions", str(questions), "--image-folder"]
        + [str(tmp_path), "--answers", str(tmp_path / "answers.jsonl"), "--no-progress"],
    }
    for name, argv in runs.items():
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert "indexing errors" not in result.stderr and "Token indices sequence length" not in result.stderr
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"chartwiz {name}: error: ")
        if name == "ask":
            assert "which leaves no room in the language model's context of 1024 tokens" in last_line
    (error,) = [json.loads(line) for line in (tmp_path / "answers.errors.jsonl").read_text().splitlines()]
    assert error["reason"].startswith("prompt longer than the context: ")


def test_merge_finds_the_adapters_base_from_another_working_directory(tiny_dir, tmp_path, capsys, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from chartwiz.inference import load_chartwiz

    trained_in = tmp_path / "project"
    shutil.copytree(tiny_dir, trained_in / "base")
    monkeypatch.chdir(trained_in)
    model, _ = load_chartwiz("base")  # a relative path, as a recipe or a script names its model
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained("adapter")
    adapter_config = trained_in / "adapter" / "adapter_config.json"
    assert json.loads(adapter_config.read_text())["base_model_name_or_path"] == str(trained_in / "base")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = ["merge", "--base", "../project/base", "--adapter", "../project/adapter"]
    assert main([*argv, "--out", "merged"]) == 0, capsys.readouterr().err
    # An adapter saved elsewhere with a relative base: from another folder the message says what the path is.
    settings = json.loads(adapter_config.read_text())
    adapter_config.write_text(json.dumps({**settings, "base_model_name_or_path": "base"}))
    capsys.readouterr()
    assert main([*argv, "--out", "merged-2"]) == 2
    error = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "was trained on base (its base_model_name_or_path), not ../project/base" in error
    assert f"relative to the folder the adapter was trained in, it is not there from here, {elsewhere}" in error
    monkeypatch.chdir(trained_in)
    assert main(["merge", "--base", "base", "--adapter", "adapter", "--out", "merged"]) == 0


def command_paths(parser, path=()):
    """Every command of the `chartwiz` parser as its words (`("data", "build")`), groups included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield (*path, name)
                yield from command_paths(subparser, (*path, name))


def help_entries(text: str) -> tuple[str, dict]:
    """The description of a `--help` page, and `{option: its help}` for the entries under `options:`."""
    description, entries, section, current = [], {}, None, None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            if line.startswith("usage:"):
                section = "usage"
            elif section in ("usage", "description") and not line.endswith(":"):
                section = "description"
                description.append(line)
            else:
                section = line
            continue
        if section == "description":
            description.append(line.strip())
        elif section == "options:" and line.startswith("  -"):
            invocation, _, rest = line.strip().partition("  ")
            current = invocation
            entries[current] = rest.strip()
        elif section == "options:" and current is not None and line.strip():
            entries[current] = (entries[current] + " " + line.strip()).strip()
    return "\n".join(description), entries


def test_every_option_of_every_command_says_what_it_does_and_its_default(capsys):
    from chartwiz.commands.cli import build_parser

    commands = sorted(command_paths(build_parser()))
    assert {("infer",), ("data", "build"), ("synth",), ("convert",)} <= set(commands)
    missing = []
    for words in [(), *commands]:
        with pytest.raises(SystemExit) as exit_status:
            main([*words, "--help"])
        assert exit_status.value.code == 0
        description, entries = help_entries(capsys.readouterr().out)
        name = " ".join(["chartwiz", *words])
        if not re.search("[\uac00-\ud7a3]", description):
            missing.append(f"{name}: no Korean line in its description")
        for option, text in entries.items():
            if option.startswith("-h, --help"):
                continue
            if not text:
                missing.append(f"{name} {option}: no help")
            elif "(default" not in text and "default:" not in text and not text.endswith("(required)"):
                missing.append(f"{name} {option}: no default shown ({text})")
    assert missing == []


_DATA_COMMANDS_ALONE = """
import json, sys
from chartwiz.commands.cli import main

synthesized = main(["synth", {charts!r}, "--n", "6", "--num-proc", "1"])
built = main(["data", "build", "--data-dir", {charts!r}, "--out", {out!r}, "--configs", "pretrain", "--num-proc", "1"])
print(json.dumps({{"exit": [synthesized, built], "loaded": sorted({{"torch", "chartwiz_hf"}} & set(sys.modules))}}))
"""


def test_synth_and_data_build_run_without_loading_torch_or_the_model_package(tmp_path):
    # The data commands build only their own options and import only the base and the data layer: the model stack
    # (torch, and chartwiz_hf, whose import registers the model) is never loaded, from parsing to the written build.
    script = _DATA_COMMANDS_ALONE.format(charts=str(tmp_path / "charts"), out=str(tmp_path / "built"))
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    # transformers 4's HfArgumentParser (the command line's parser) imports torch itself; transformers 5's does not.
    import transformers

    torch_of_the_parser = ["torch"] if transformers.__version__.startswith("4.") else []
    assert result == {"exit": [0, 0], "loaded": torch_of_the_parser}
    assert os.listdir(tmp_path / "built" / "pretrain"), "the build was written"


def test_a_command_builds_its_own_options_only_and_names_the_others(capsys):
    from chartwiz.commands.cli import build_parser, command_of

    assert command_of(["synth", "out"]) == "synth" and command_of(["--help"]) is None and command_of([]) is None
    with pytest.raises(SystemExit):
        build_parser("synth").parse_args(["convert", "--help"])  # convert named only: no options built for it
    assert "--mm-projector" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", "--help"])  # run as its own command, it has them
    assert "--mm-projector" in capsys.readouterr().out
