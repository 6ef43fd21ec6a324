import json

import pytest
from transformers import AutoConfig, LlamaConfig, Pix2StructVisionConfig, Qwen2Config

from chartwiz_hf import ChartWizConfig


def small_vision(**kwargs):
    return Pix2StructVisionConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, d_kv=8, d_ff=32, **kwargs
    )


def test_sub_configs_accepted_as_dicts_or_objects():
    text = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    from_objects = ChartWizConfig(small_vision(), text, image_token_id=5, max_patches=32)
    from_dicts = ChartWizConfig(small_vision().to_dict(), text.to_dict(), image_token_id=5, max_patches=32)
    assert isinstance(from_dicts.vision_config, Pix2StructVisionConfig)
    assert isinstance(from_dicts.text_config, Qwen2Config)
    assert from_dicts.to_dict() == from_objects.to_dict()


def test_round_trip_through_auto_config(tmp_path):
    config = ChartWizConfig(
        small_vision(), LlamaConfig(hidden_size=16, num_attention_heads=2), projector_type="linear"
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ChartWizConfig)
    assert loaded.projector_type == "linear"
    assert loaded.text_config.hidden_size == 16


@pytest.mark.parametrize("projector_type", ["mlp", "mlp0x_gelu", "conv", "mlp2x_relu", ""])
def test_unknown_projector_type_names_allowed_values(projector_type):
    with pytest.raises(ValueError, match="linear.*identity.*mlp"):
        ChartWizConfig(projector_type=projector_type)


def test_identity_projector_needs_equal_widths():
    with pytest.raises(ValueError, match="equal hidden sizes"):
        ChartWizConfig(small_vision(), LlamaConfig(hidden_size=32), projector_type="identity")


def test_max_patches_must_fit_the_encoder_position_table():
    with pytest.raises(ValueError, match="seq_len"):
        ChartWizConfig(small_vision(seq_len=64), max_patches=64)


def test_unknown_text_model_type_is_reported():
    with pytest.raises(ValueError, match="not-a-model"):
        ChartWizConfig(text_config={"model_type": "not-a-model"})


@pytest.mark.parametrize("part", ["text_config", "vision_config"])
def test_saved_config_without_a_part_is_refused_not_read_as_the_defaults(tmp_path, part):
    config = ChartWizConfig(small_vision(), LlamaConfig(hidden_size=16, num_attention_heads=2), max_patches=32)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved[part]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=f"no {part}"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"no {part}"):
        ChartWizConfig.from_pretrained(tmp_path)
    # built in code, the config keeps its documented defaults (transformers builds one to diff saved configs against)
    assert ChartWizConfig().text_config.model_type == "llama"
