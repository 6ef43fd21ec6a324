import inspect
import os

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaForCausalLM,
    Pix2StructVisionModel,
)

from chartwiz.inference import build_prompt
from chartwiz_hf import (
    ChartWizConfig,
    ChartWizForConditionalGeneration,
    ChartWizImageProcessor,
    ChartWizModel,
    ChartWizProcessor,
)

from .conftest import assert_same_answers_under_the_other_major, draw_chart, run_without_chartwiz


def prompt_inputs(processor, images, questions, **kwargs):
    prompts = [build_prompt(processor, question) for question in questions]
    return processor(images=images, text=prompts, return_tensors="pt", **kwargs)


def reference_logits(model, inputs):
    """Logits from HF's own Pix2StructVisionModel + a hand-written projector + HF's LlamaForCausalLM."""
    config = model.config
    vision = Pix2StructVisionModel(config.vision_config).eval()
    vision.load_state_dict(model.model.vision_tower.state_dict())
    language_model = LlamaForCausalLM(config.text_config).eval()
    language_model.model.load_state_dict(model.model.language_model.state_dict())
    language_model.lm_head.load_state_dict(model.lm_head.state_dict())
    projector = model.model.multi_modal_projector

    features = vision(flattened_patches=inputs["pixel_values"], attention_mask=inputs["pixel_attention_mask"])
    hidden = F.linear(features.last_hidden_state, projector.linear_1.weight, projector.linear_1.bias)
    hidden = F.linear(F.gelu(hidden), projector.linear_2.weight, projector.linear_2.bias)
    embeds = language_model.get_input_embeddings()(inputs["input_ids"]).clone()
    image_positions = inputs["input_ids"] == config.image_token_id
    embeds[image_positions] = hidden.reshape(-1, hidden.shape[-1])
    return language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits


@torch.no_grad()
def test_logits_equal_an_independent_composition_of_hf_models(tiny, charts):
    model, processor = tiny
    inputs = prompt_inputs(processor, charts[:2], ["가장 큰 값은?", "두 번째 막대의 값은 얼마인가요?"], padding=True)
    logits = model(**inputs).logits
    expected = reference_logits(model, inputs)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_forward_backward_trains_every_part(tiny, charts):
    model, processor = tiny
    model.train()
    inputs = prompt_inputs(processor, charts[:1], ["값을 표로 알려줘"])
    outputs = model(**inputs, labels=inputs["input_ids"].clone())
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    for part in (
        model.model.vision_tower,
        model.model.multi_modal_projector,
        model.model.language_model,
        model.lm_head,
    ):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@torch.no_grad()
def test_loss_ignores_labels_at_image_positions(tiny, charts):
    model, processor = tiny
    inputs = prompt_inputs(processor, charts[:1], ["합계는?"])
    image_positions = inputs["input_ids"] == model.config.image_token_id
    labels = inputs["input_ids"].clone()
    masked = labels.masked_fill(image_positions, -100)
    noisy = labels.masked_fill(image_positions, 7)
    loss_masked = model(**inputs, labels=masked).loss
    assert torch.equal(model(**inputs, labels=noisy).loss, loss_masked)
    # and the loss by hand over the text positions only
    logits = model(**inputs).logits[:, :-1].flatten(0, 1)
    target = masked[:, 1:].flatten()
    torch.testing.assert_close(loss_masked, F.cross_entropy(logits, target, ignore_index=-100))


@pytest.mark.slow
@torch.no_grad()
def test_greedy_generation_with_cache_equals_without(tiny, charts):
    model, processor = tiny
    inputs = prompt_inputs(processor, charts[:1], ["가장 작은 값은?"])
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    with_cache = model.generate(**inputs, use_cache=True, **kwargs)
    without_cache = model.generate(**inputs, use_cache=False, **kwargs)
    assert with_cache.shape[1] == inputs["input_ids"].shape[1] + 8
    assert torch.equal(with_cache, without_cache)


@torch.no_grad()
def test_left_padded_batch_equals_each_alone(tiny, charts):
    model, processor = tiny
    questions = ["값?", "이 차트에서 가장 큰 막대와 가장 작은 막대의 차이는 얼마인가요?", "두 번째 항목의 값을 알려줘"]
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    batch = prompt_inputs(processor, charts, questions, padding=True, padding_side="left")
    assert (batch["attention_mask"][:, 0] == 0).any(), "the prompts should need padding"
    batch_new = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for index, (image, question) in enumerate(zip(charts, questions)):
        alone = prompt_inputs(processor, [image], [question])
        alone_new = model.generate(**alone, **kwargs)[:, alone["input_ids"].shape[1] :]
        assert torch.equal(batch_new[index], alone_new[0]), f"sample {index} differs when batched"


@torch.no_grad()
def test_eager_and_sdpa_agree(tiny_dir, charts):
    eager = ChartWizForConditionalGeneration.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    sdpa = ChartWizForConditionalGeneration.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    assert sdpa.model.vision_tower.config._attn_implementation == "eager"
    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    inputs = prompt_inputs(
        processor, charts[:2], ["값?", "가장 큰 값은 무엇인가요?"], padding=True, padding_side="left"
    )
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(eager(**inputs).logits[mask], sdpa(**inputs).logits[mask], rtol=1e-4, atol=1e-4)


def test_save_load_round_trip_is_bit_identical(tiny, tmp_path, charts):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "model.safetensors")
    assert not any(name.endswith((".bin", ".pt")) for name in os.listdir(tmp_path))
    loaded = ChartWizForConditionalGeneration.from_pretrained(tmp_path).eval()
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key, value in original_state.items():
        assert torch.equal(value, loaded_state[key]), key
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_loads_through_every_auto_class(tiny_dir):
    assert isinstance(AutoConfig.from_pretrained(tiny_dir), ChartWizConfig)
    assert type(AutoModelForImageTextToText.from_pretrained(tiny_dir)) is ChartWizForConditionalGeneration
    assert type(AutoModel.from_pretrained(tiny_dir)) is ChartWizModel
    assert type(AutoProcessor.from_pretrained(tiny_dir)) is ChartWizProcessor
    assert type(AutoImageProcessor.from_pretrained(tiny_dir)) is ChartWizImageProcessor


@pytest.mark.skipif(
    not hasattr(transformers, "AutoModelForVision2Seq"),
    reason="transformers 5 removed AutoModelForVision2Seq; test_vision2seq_is_gone_and_image_text_to_text_replaces_it",
)
def test_the_designs_vision2seq_call_loads_chartwiz_on_transformers_4(tiny_dir):
    with pytest.warns(FutureWarning, match="AutoModelForVision2Seq` is deprecated"):
        model = transformers.AutoModelForVision2Seq.from_pretrained(tiny_dir)
    assert type(model) is ChartWizForConditionalGeneration


@pytest.mark.skipif(
    hasattr(transformers, "AutoModelForVision2Seq"),
    reason="transformers 4 still has AutoModelForVision2Seq; test_the_designs_vision2seq_call_loads_chartwiz_on_...",
)
def test_vision2seq_is_gone_and_image_text_to_text_replaces_it(tiny_dir):
    with pytest.raises(ImportError):
        from transformers import AutoModelForVision2Seq  # noqa: F401
    assert type(AutoModelForImageTextToText.from_pretrained(tiny_dir)) is ChartWizForConditionalGeneration


def test_saved_auto_map_names_every_auto_class(tiny_dir):
    import json

    with open(os.path.join(tiny_dir, "config.json"), encoding="utf-8") as file:
        auto_map = json.load(file)["auto_map"]
    assert auto_map["AutoModel"] == "modeling_chartwiz.ChartWizModel"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_chartwiz.ChartWizForConditionalGeneration"
    assert auto_map["AutoModelForVision2Seq"] == "modeling_chartwiz.ChartWizForConditionalGeneration"
    assert auto_map["AutoConfig"] == "configuration_chartwiz.ChartWizConfig"


@pytest.mark.slow
def test_loads_with_trust_remote_code_where_the_package_cannot_be_imported(tiny, tiny_dir, tmp_path, charts):
    model, processor = tiny
    image_path = tmp_path / "chart.png"
    charts[0].save(image_path)
    script = f"""
        import json
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained({tiny_dir!r}, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained({tiny_dir!r}, trust_remote_code=True)
        assert type(base).__name__ == "ChartWizModel", type(base)
        processor = AutoProcessor.from_pretrained({tiny_dir!r}, trust_remote_code=True)
        assert not any(name.startswith("chartwiz_hf") for name in sys.modules)
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "값?"}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open({str(image_path)!r}), text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        print(json.dumps({{"model": type(model).__module__, "logits": logits[0, -1].tolist(),
                           "pixels": inputs["pixel_values"].sum().item()}}))
        """
    remote = run_without_chartwiz(script, tmp_path)
    assert remote["model"].startswith("transformers_modules")
    inputs = prompt_inputs(processor, [charts[0]], ["값?"])
    assert remote["pixels"] == pytest.approx(inputs["pixel_values"].sum().item(), rel=1e-6)
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1]
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_tiny_checkpoint_answers_the_same_under_the_other_transformers_major(tiny_dir, tmp_path):
    assert_same_answers_under_the_other_major(tiny_dir, tmp_path)


def test_image_text_to_text_pipeline(tiny_dir, charts):
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=tiny_dir)
    messages = [{"role": "user", "content": [{"type": "image", "image": charts[0]}, {"type": "text", "text": "값?"}]}]
    output = pipe(text=messages, max_new_tokens=4, return_full_text=False)
    assert isinstance(output[0]["generated_text"], str)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_dir, charts):
    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    results = []
    for checkpointing in (False, True):
        model = ChartWizForConditionalGeneration.from_pretrained(tiny_dir)
        model.train()
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name (the old one warns)
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.language_model.gradient_checkpointing
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@torch.no_grad()
def test_bf16_and_device_map_auto(tiny_dir, charts):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.bfloat16, device_map="auto").eval()
    assert model.dtype == torch.bfloat16
    assert {"LlamaDecoderLayer", "Pix2StructVisionLayer"} <= set(model._no_split_modules)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    output = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


@torch.no_grad()
def test_resize_token_embeddings(tiny, charts):
    model, processor = tiny
    old = model.get_input_embeddings().num_embeddings
    processor.tokenizer.add_tokens(["<새토큰>"])
    model.resize_token_embeddings(len(processor.tokenizer))
    assert model.get_input_embeddings().num_embeddings == old + 1
    assert model.lm_head.out_features == old + 1
    assert model.config.text_config.vocab_size == old + 1
    inputs = prompt_inputs(processor, charts[:1], ["<새토큰> 값?"])
    assert model(**inputs).logits.shape[-1] == old + 1


@pytest.mark.parametrize("projector_type", ["linear", "mlp3x_gelu", "identity"])
@torch.no_grad()
def test_projector_types(projector_type):
    from chartwiz.models.tiny import tiny_configs

    vision_config, text_config = tiny_configs(vocab_size=50, max_patches=8)
    if projector_type == "identity":
        text_config.hidden_size = vision_config.hidden_size
    config = ChartWizConfig(vision_config, text_config, projector_type=projector_type, image_token_id=3, max_patches=8)
    model = ChartWizForConditionalGeneration(config).eval()
    linears = [m for m in model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == {"linear": 1, "mlp3x_gelu": 3, "identity": 0}[projector_type]
    patches = torch.randn(2, 8, 770)
    patches[..., 0], patches[..., 1] = 1.0, torch.arange(1, 9, dtype=torch.float)  # one row of 8 patches
    features = model.get_image_features(patches, torch.ones(2, 8))
    assert features.shape == (2, 8, text_config.hidden_size)


@torch.no_grad()
def test_image_token_count_mismatch_says_both_counts(tiny, charts):
    model, processor = tiny
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    two_images = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(ValueError, match=r"tokens: 16, features 32"):
        model(input_ids=inputs["input_ids"], pixel_values=two_images, attention_mask=inputs["attention_mask"])


@torch.no_grad()
def test_image_tokens_without_pixels_are_an_error(tiny, charts):
    model, processor = tiny
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


@torch.no_grad()
def test_prompt_longer_than_the_context_is_a_clear_error(tiny_dir, charts):
    model = ChartWizForConditionalGeneration.from_pretrained(tiny_dir).eval()
    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    context = model.config.text_config.max_position_embeddings
    inputs = prompt_inputs(processor, charts[:1], ["가" * (context * 2)])
    with pytest.raises(ValueError, match=f"longer than the language model's context of {context}"):
        model.generate(**inputs, max_new_tokens=2)


@torch.no_grad()
def test_text_only_input_runs_without_images(tiny):
    model, processor = tiny
    inputs = processor(text=["안녕하세요"], return_tensors="pt")
    assert "pixel_values" not in inputs
    assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


@pytest.mark.slow
@torch.no_grad()
def test_batched_answers_equal_answers_one_by_one_with_either_cache(tiny, charts):
    from chartwiz.inference import answer_questions

    model, processor = tiny
    questions = ["값?", "가장 큰 막대와 가장 작은 막대의 차이는 얼마인가요?", "두 번째 항목의 값"]
    kwargs = {"max_new_tokens": 5, "min_new_tokens": 5}
    batched = answer_questions(model, processor, charts, questions, **kwargs)
    static = answer_questions(model, processor, charts, questions, cache_implementation="static", **kwargs)
    alone = [answer_questions(model, processor, [image], [q], **kwargs)[0] for image, q in zip(charts, questions)]
    assert batched == static == alone


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@torch.no_grad()
def test_ready_made_padding_mask_equals_transformers_mask(model_type, tiny_dir, charts, monkeypatch):
    import chartwiz_hf.modeling_chartwiz as modeling
    from chartwiz.models.tiny import tiny_configs

    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    vision_config, text_config = tiny_configs(len(processor.tokenizer), max_patches=16)
    if model_type == "qwen2":
        text_config = AutoConfig.for_model(
            "qwen2", **{k: v for k, v in text_config.to_dict().items() if k != "model_type"}
        )
    config = ChartWizConfig(vision_config, text_config, image_token_id=processor.image_token_id, max_patches=16)
    torch.manual_seed(0)
    model = ChartWizForConditionalGeneration(config).eval()
    inputs = prompt_inputs(
        processor, charts, ["값?", "가장 큰 값은 무엇인가요? 자세히", "합"], padding=True, padding_side="left"
    )
    mask = inputs["attention_mask"].bool()
    assert not mask.all()
    monkeypatch.setattr(modeling, "_READY_MASK", True)
    expanded = modeling.expanded_attention_mask(inputs["attention_mask"], config.text_config, None, mask.shape[1])
    assert expanded.shape == (3, 1, mask.shape[1], mask.shape[1])
    ours = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
    # transformers' own mask, as where transformers builds masks without vmap
    monkeypatch.setattr(modeling, "_READY_MASK", False)
    assert (
        modeling.expanded_attention_mask(inputs["attention_mask"], config.text_config, None, 1)
        is inputs["attention_mask"]
    )
    reference = model(**inputs).logits
    torch.testing.assert_close(ours[mask], reference[mask], rtol=0, atol=1e-6)
    assert torch.equal(generated, model.generate(**inputs, max_new_tokens=4, min_new_tokens=4))


def test_ready_made_mask_only_where_it_equals_transformers_mask(monkeypatch):
    from transformers import MistralConfig

    import chartwiz_hf.modeling_chartwiz as modeling
    from chartwiz_hf.modeling_chartwiz import expanded_attention_mask

    monkeypatch.setattr(modeling, "_READY_MASK", True)
    padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    sliding = MistralConfig(sliding_window=2)
    sliding._attn_implementation = "sdpa"
    assert expanded_attention_mask(padded, sliding, None, 3) is padded
    full = MistralConfig(sliding_window=None)
    for implementation, expanded in (("sdpa", True), ("eager", False)):
        full._attn_implementation = implementation
        assert (expanded_attention_mask(padded, full, None, 3) is not padded) == expanded
    full._attn_implementation = "sdpa"
    unpadded = torch.ones(2, 3, dtype=torch.long)
    assert expanded_attention_mask(unpadded, full, None, 3) is unpadded
    mask = expanded_attention_mask(padded, full, None, 3)
    assert mask[0, 0].tolist() == [[False, False, False], [False, True, False], [False, True, True]]
    assert mask[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@pytest.mark.slow
@torch.no_grad()
def test_generation_running_past_the_context_is_a_clear_error(tiny_dir, charts):
    model = ChartWizForConditionalGeneration.from_pretrained(tiny_dir).eval()
    processor = ChartWizProcessor.from_pretrained(tiny_dir)
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    room = model.config.text_config.max_position_embeddings - inputs["input_ids"].shape[1]
    assert (
        model.generate(**inputs, max_new_tokens=room, min_new_tokens=room).shape[1]
        == inputs["input_ids"].shape[1] + room
    )
    with pytest.raises(ValueError, match="longer than the language model's context"):
        model.generate(**inputs, max_new_tokens=room + 2, min_new_tokens=room + 2)


@torch.no_grad()
def test_return_dict_false_gives_the_same_outputs_as_tuples(tiny, charts):
    model, processor = tiny
    inputs = prompt_inputs(processor, charts[:1], ["값?"])
    labels = inputs["input_ids"].clone()
    as_dict = model(**inputs, labels=labels)
    as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[1], as_dict.logits, rtol=0, atol=0)
    base = model.model(**inputs, return_dict=False)
    assert isinstance(base, tuple)
    torch.testing.assert_close(base[0], model.model(**inputs).last_hidden_state, rtol=0, atol=0)


@torch.no_grad()
def test_tiny_encoder_tells_different_charts_apart(tiny):
    model, processor = tiny
    # Same size, so the same patch grid: only the pixels differ.
    first, second = draw_chart(320, 240, (3, 7, 5), seed=0), draw_chart(320, 240, (9, 1, 8, 2), seed=5)
    pixels = processor.image_processor([first, second, first], return_tensors="pt")
    features = model.get_image_features(pixels["pixel_values"], pixels["pixel_attention_mask"]).mean(dim=1)
    assert F.cosine_similarity(features[0], features[2], dim=0) > 0.9999
    assert F.cosine_similarity(features[0], features[1], dim=0) < 0.97


def test_untied_lm_head_is_initialized_like_every_other_linear():
    from chartwiz.models.tiny import make_tiny_chartwiz

    model, _ = make_tiny_chartwiz(seed=1, max_patches=16)
    std = model.config.text_config.initializer_range
    assert not model.config.text_config.tie_word_embeddings
    for name, linear in [
        ("lm_head", model.lm_head),
        ("projector", model.multi_modal_projector.linear_2),
        ("q_proj", model.language_model.layers[0].self_attn.q_proj),
    ]:
        weight = linear.weight.detach()
        # normal(0, std): torch's default uniform init of a 64-wide linear would have a std of 0.072
        assert abs(weight.std().item() - std) < 0.1 * std, name
        assert abs(weight.mean().item()) < 0.1 * std, name


def test_no_checkpoint_key_renaming():
    # transformers 4.57 and PEFT rename checkpoint keys by this mapping (5.x keys its renamings on built-in model
    # types, never on ChartWiz's); ChartWiz checkpoints never had other names.
    assert getattr(ChartWizForConditionalGeneration, "_checkpoint_conversion_mapping", {}) == {}
    assert getattr(ChartWizModel, "_checkpoint_conversion_mapping", {}) == {}


def test_ready_made_mask_only_where_transformers_builds_masks_with_vmap(monkeypatch):
    from transformers import masking_utils

    import chartwiz_hf.modeling_chartwiz as modeling

    # 4.57's sdpa_mask always vmaps; 5.x's takes `use_vmap` and broadcasts by default.
    vmaps = "use_vmap" not in inspect.signature(masking_utils.sdpa_mask).parameters
    assert modeling.builds_sdpa_masks_with_vmap() is vmaps
    assert modeling._READY_MASK is vmaps
    config = AutoConfig.for_model("llama", hidden_size=16, num_attention_heads=2)
    config._attn_implementation = "sdpa"
    padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert (modeling.expanded_attention_mask(padded, config, None, 3) is padded) is not vmaps


@torch.no_grad()
def test_get_image_features_returns_the_projected_features_as_pooler_output(tiny, charts):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model, processor = tiny
    pixels = processor.image_processor(charts, return_tensors="pt")
    features = model.get_image_features(pixels["pixel_values"], pixels["pixel_attention_mask"])
    output = model.get_image_features(pixels["pixel_values"], pixels["pixel_attention_mask"], return_dict=True)
    assert isinstance(output, BaseModelOutputWithPooling)
    # One entry per image, what the model writes at that image's <image> tokens.
    hidden_size = model.config.text_config.hidden_size
    assert output.pooler_output.shape == (len(charts), processor.image_seq_length, hidden_size)
    assert torch.equal(output.pooler_output, features)
    encoder = model.model.vision_tower(
        flattened_patches=pixels["pixel_values"], attention_mask=pixels["pixel_attention_mask"]
    )
    assert torch.equal(output.last_hidden_state, encoder.last_hidden_state)


def packed_attention(module, query, key, value, attention_mask, **kwargs):
    """
    A stand-in for vLLM's attention (registered under its name): every sequence of the row is one request, attended
    causally, whatever the mask and the context length say.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


@torch.no_grad()
def test_checks_for_one_sequence_per_row_are_off_under_vllms_attention(tiny_dir, tiny):
    from transformers import AttentionInterface

    from chartwiz_hf.modeling_chartwiz import PACKED_ATTENTION

    model, processor = tiny
    context = model.config.text_config.max_position_embeddings
    image_embedding = model.get_input_embeddings()(torch.tensor([[processor.image_token_id]]))
    # One row as vLLM packs it: more tokens than the context, and an <image> the model generated, no pixels.
    text_ids = 3 + torch.arange(context + 8)[None] % 40  # past the special tokens
    packed_row = torch.cat([model.get_input_embeddings()(text_ids), image_embedding], 1)
    with pytest.raises(ValueError, match="longer than"):
        model(inputs_embeds=packed_row)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(inputs_embeds=image_embedding)

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    served = ChartWizForConditionalGeneration.from_pretrained(tiny_dir, attn_implementation=PACKED_ATTENTION).eval()
    assert served.config.text_config._attn_implementation == PACKED_ATTENTION
    logits = served(inputs_embeds=packed_row).logits
    assert logits.shape[1] == context + 9 and torch.isfinite(logits).all()
    # The same numbers as the model attending over the row itself, cut to the context.
    expected = model(inputs_embeds=packed_row[:, :context]).logits
    torch.testing.assert_close(logits[:, :context], expected)


@torch.no_grad()
def test_the_image_placeholder_is_never_generated(tiny_dir, tiny, charts):
    from chartwiz.inference import prepare_inputs

    model, processor = tiny
    assert model.generation_config.suppress_tokens == [processor.image_token_id]
    # A head that scores <image> above everything: unsuppressed, the first new token is it.
    model.lm_head.weight[processor.image_token_id] = 100 * model.lm_head.weight.abs().max()
    inputs = prepare_inputs(processor, charts[:1], ["값?"])
    unsuppressed = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[])
    assert unsuppressed[0, inputs["input_ids"].shape[1]].item() == processor.image_token_id
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert processor.image_token_id not in generated[0, inputs["input_ids"].shape[1] :].tolist()


def test_init_tiny_attention_heads_are_a_size_vllms_cpu_attention_takes(tiny):
    model, _ = tiny
    text_config = model.config.text_config
    assert text_config.hidden_size // text_config.num_attention_heads == 32
    assert text_config.num_key_value_heads < text_config.num_attention_heads  # grouped-query attention stays tested
