import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForVision2Seq,
    AutoProcessor,
    LlamaForCausalLM,
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
    Pix2StructImageProcessor,
    PreTrainedTokenizerFast,
)

from chartwiz_hf.chat_templates import load_chat_template
from chartwiz_hf.cli import main
from chartwiz_hf.tiny import tiny_configs

from .conftest import draw_chart


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
    Pix2StructImageProcessor(is_vqa=True, max_patches=32).save_pretrained(root / "deplot")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["차트의 가장 큰 값은 서울입니다.", "chart table value 1 2 3"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert "<image>" not in tokenizer.get_vocab() and tokenizer.pad_token is None
    language_model = LlamaForCausalLM(tiny_configs(len(tokenizer), tie_word_embeddings=True)[1])
    language_model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return root, pix2struct, language_model


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
    model = AutoModelForVision2Seq.from_pretrained(out).eval()
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
