"""
`chartwiz convert`: checkpoints written here in the original ChartWiz (LLaVA fork) format, with its exact key names,
convert to ChartWiz models whose logits and greedy answers equal the original's forward pass, computed independently
from HF's Pix2Struct encoder, an `nn.Sequential` projector and the causal LM on embeddings spliced at the sentinel.
"""

import copy
import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from chartwiz.commands.cli import main
from chartwiz.inference import load_chartwiz
from chartwiz.models.tiny import tiny_configs, train_byte_level_bpe
from chartwiz_hf import convert_chartwiz_llava_to_hf
from chartwiz_hf.chat_templates import load_chat_template

from .conftest import assert_same_answers_under_the_other_major, draw_chart, pix2struct_image_processor


IMAGE_TOKEN_INDEX = -200  # the original's sentinel id for the image
MAX_PATCHES = 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Original:
    """The original forward pass: Pix2Struct encoder -> `nn.Sequential` projector -> LM on spliced embeddings."""

    def __init__(self, encoder, projector, language_model):
        self.encoder, self.projector, self.language_model = encoder.eval(), projector.eval(), language_model.eval()

    @torch.no_grad()
    def spliced_embeddings(self, input_ids: list[int], pixel_values, pixel_attention_mask) -> torch.Tensor:
        # [1, patches, text_hidden]: every encoder output, padding patches included
        features = self.projector(
            self.encoder(flattened_patches=pixel_values, attention_mask=pixel_attention_mask).last_hidden_state
        )
        position = input_ids.index(IMAGE_TOKEN_INDEX)
        embed = self.language_model.get_input_embeddings()
        before, after = embed(torch.tensor(input_ids[:position])), embed(torch.tensor(input_ids[position + 1 :]))
        return torch.cat([before, features[0], after])[None]

    @torch.no_grad()
    def logits(self, input_ids, pixel_values, pixel_attention_mask) -> torch.Tensor:
        embeds = self.spliced_embeddings(input_ids, pixel_values, pixel_attention_mask)
        return self.language_model(inputs_embeds=embeds).logits

    @torch.no_grad()
    def greedy(self, input_ids, pixel_values, pixel_attention_mask, max_new_tokens: int, eos_token_id: int):
        embeds = self.spliced_embeddings(input_ids, pixel_values, pixel_attention_mask)
        embed = self.language_model.get_input_embeddings()
        generated = []
        for _ in range(max_new_tokens):
            next_id = int(self.language_model(inputs_embeds=embeds).logits[0, -1].argmax())
            generated.append(next_id)
            if next_id == eos_token_id:
                break
            embeds = torch.cat([embeds, embed(torch.tensor([[next_id]]))], dim=1)
        return generated


def original_ids(input_ids: torch.Tensor, image_token_id: int) -> list[int]:
    """The converted prompt's ids with its run of image tokens put back as the original's one sentinel."""
    ids, collapsed = input_ids[0].tolist(), []
    for token in ids:
        if token == image_token_id:
            if not collapsed or collapsed[-1] != IMAGE_TOKEN_INDEX:
                collapsed.append(IMAGE_TOKEN_INDEX)
        else:
            collapsed.append(token)
    return collapsed


def original_tokenization(tokenizer, prompt: str) -> list[int]:
    """How the original tokenized a prompt: the text around `<image>` separately, the sentinel in between."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids = ids + [IMAGE_TOKEN_INDEX] + chunk
    return ids


def make_tokenizer() -> PreTrainedTokenizerFast:
    corpus = ["A chat between a curious human and an artificial intelligence assistant.", "USER: ASSISTANT: 값은?"]
    return train_byte_level_bpe(corpus * 4, 300, ["<|endoftext|>"], eos_token="<|endoftext|>")


def text_model(kind: str, vocab_size: int, **overrides):
    _, llama_config = tiny_configs(vocab_size, max_patches=MAX_PATCHES, **overrides)
    if kind == "llama":
        return LlamaForCausalLM(llama_config)
    sizes = {key: getattr(llama_config, key) for key in ("vocab_size", "hidden_size", "intermediate_size")}
    sizes.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    sizes.update(overrides)
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**sizes))
    return Qwen2ForCausalLM(Qwen2Config(**sizes))


def sequential_projector(projector_type: str, vision_hidden: int, text_hidden: int) -> nn.Module:
    """The original's projector: `nn.Linear` for `linear`, `nn.Sequential(Linear, GELU, Linear)` for `mlp2x_gelu`."""
    if projector_type == "linear":
        return nn.Linear(vision_hidden, text_hidden)
    return nn.Sequential(nn.Linear(vision_hidden, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden))


def llava_config(language_model, deplot: str, projector_type: str, model_type: str = "llava_llama", **changes) -> dict:
    """config.json as the original saved it: the LM's own config plus the multimodal and training keys."""
    config = language_model.config.to_dict()
    config.update(
        model_type=model_type,
        architectures=[{"llava_llama": "LlavaLlamaForCausalLM"}.get(model_type, "LlavaForCausalLM")],
        mm_vision_tower=deplot,
        mm_projector_type=projector_type,
        mm_hidden_size=32,
        mm_vision_select_layer=-1,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_projector_lr=None,
        use_mm_proj=True,
        tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False,
        image_aspect_ratio="pad",
        tokenizer_model_max_length=512,
        tokenizer_padding_side="right",
        use_cache=False,
    )
    config.update(changes)
    return config


def original_state_dict(original: Original, include_vision: bool = True) -> dict:
    """Weights under the original's names: the LM's, `model.mm_projector.*`, `model.vision_tower.vision_tower.*`."""
    state_dict = dict(original.language_model.state_dict())
    state_dict.update({f"model.mm_projector.{key}": value for key, value in original.projector.state_dict().items()})
    if include_vision:
        state_dict.update(
            {f"model.vision_tower.vision_tower.{key}": value for key, value in original.encoder.state_dict().items()}
        )
    return {key: value.clone().contiguous() for key, value in state_dict.items()}


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny DePlot-like checkpoint (full Pix2Struct, and its encoder alone) and a tokenizer without <image>."""
    root = tmp_path_factory.mktemp("original-parts")
    torch.manual_seed(0)
    vision_config, _ = tiny_configs(vocab_size=100, max_patches=MAX_PATCHES)
    pix2struct = Pix2StructForConditionalGeneration(
        Pix2StructConfig(
            vision_config=vision_config.to_dict(),
            text_config={"vocab_size": 50, "hidden_size": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2},
        )
    )
    pix2struct.save_pretrained(root / "deplot")
    pix2struct_image_processor(is_vqa=True, max_patches=MAX_PATCHES).save_pretrained(root / "deplot")
    pix2struct.encoder.save_pretrained(root / "deplot-encoder")
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    assert "<image>" not in tokenizer.get_vocab()
    return {"root": root, "encoder": pix2struct.encoder, "tokenizer": tokenizer}


def build_original(parts, kind="llama", projector_type="mlp2x_gelu", seed=1, tuned_tower=False, **overrides):
    """The original's modules; with `tuned_tower`, a tower whose weights differ from the DePlot checkpoint's."""
    torch.manual_seed(seed)
    language_model = text_model(kind, len(parts["tokenizer"]), **overrides)
    projector = sequential_projector(projector_type, 32, language_model.config.hidden_size)
    encoder = copy.deepcopy(parts["encoder"])
    if tuned_tower:
        with torch.no_grad():
            for parameter in encoder.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return Original(encoder, projector, language_model)


def write_full_checkpoint(
    directory, parts, original, projector_type="mlp2x_gelu", model_type="llava_llama", **changes
):
    """A full original checkpoint as one `pytorch_model.bin`, with the tokenizer the original saved beside it."""
    os.makedirs(directory, exist_ok=True)
    state_dict = original_state_dict(original)
    for layer in range(original.language_model.config.num_hidden_layers):
        # Older transformers saved the rotary buffers with the weights.
        state_dict[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(state_dict, os.path.join(directory, "pytorch_model.bin"))
    config = llava_config(
        original.language_model, str(parts["root"] / "deplot"), projector_type, model_type, **changes
    )
    write_json(os.path.join(directory, "config.json"), config)
    parts["tokenizer"].save_pretrained(directory)
    return state_dict


def chart_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "가장 큰 값은?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return prompt, processor(images=draw_chart(), text=prompt, return_tensors="pt")


def assert_matches_original(model, processor, original: Original, generate: bool = True):
    """Same logits over the original vocabulary at every position, and the same greedy answer."""
    _, inputs = chart_inputs(processor)
    ids = original_ids(inputs["input_ids"], model.config.image_token_id)
    patches, mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
    expected = original.logits(ids, patches, mask)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == expected.shape[1]
    torch.testing.assert_close(logits[..., : expected.shape[-1]], expected, rtol=1e-4, atol=1e-4)
    if generate:
        eos = processor.tokenizer.eos_token_id
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=eos)
        answer = output[0, inputs["input_ids"].shape[1] :].tolist()
        assert answer == original.greedy(ids, patches, mask, max_new_tokens=6, eos_token_id=eos)


@pytest.mark.slow
def test_full_bin_checkpoint_matches_the_original(parts, tmp_path, caplog, capsys):
    # The checkpoint's own tower wins over the one mm_vision_tower names (the original fine-tuned DePlot elsewhere).
    original = build_original(parts, tuned_tower=True)
    write_full_checkpoint(tmp_path / "llava", parts, original)
    out = tmp_path / "chartwiz"
    caplog.set_level("INFO")
    code = main(["convert", "--llava", str(tmp_path / "llava"), "--out", str(out), "--max-patches", str(MAX_PATCHES)])
    assert code == 0, capsys.readouterr().err
    assert "inv_freq" in caplog.text and "rotary embedding buffer, recomputed from the config" in caplog.text

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert_matches_original(model, processor, original)

    tokenizer = processor.tokenizer
    vocab = len(parts["tokenizer"])
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == vocab
    assert model.get_input_embeddings().num_embeddings == model.config.text_config.vocab_size == vocab + 1
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.model_max_length == 512
    assert processor.chat_template == load_chat_template("synatra_mini")
    assert processor.image_processor.is_vqa and processor.image_seq_length == MAX_PATCHES
    assert model.config.projector_type == "mlp2x_gelu" and model.config.text_config.model_type == "llama"
    assert not any(key.startswith("mm_") for key in model.config.text_config.to_dict())
    assert {"model.safetensors", "processor_config.json", "NanumGothic.ttf", "modeling_chartwiz.py"} <= set(
        os.listdir(out)
    ), "weights, processor, header font, and the code for trust_remote_code"
    assert not any(name.endswith(".bin") for name in os.listdir(out))

    # The prompt's ids are the original's chunked tokenization with the sentinel expanded to one token per patch.
    prompt, inputs = chart_inputs(processor)
    expected_ids = original_tokenization(parts["tokenizer"], prompt)
    assert original_ids(inputs["input_ids"], model.config.image_token_id) == expected_ids
    assert_same_answers_under_the_other_major(out, tmp_path / "other-major")


def test_sharded_safetensors_with_tied_embeddings_and_the_tower_from_its_checkpoint(parts, tmp_path, caplog):
    """A Qwen2 run with tied embeddings, a `linear` projector, and no vision weights saved."""
    original = build_original(parts, kind="qwen2", projector_type="linear", tie_word_embeddings=True)
    llava = tmp_path / "llava"
    os.makedirs(llava)
    state_dict = original_state_dict(original, include_vision=False)
    state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"].clone()
    names = sorted(state_dict)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({key: state_dict[key] for key in keys}, llava / shard, metadata={"format": "pt"})
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    write_json(llava / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    deplot = str(parts["root"] / "deplot")
    write_json(llava / "config.json", llava_config(original.language_model, deplot, "linear", "llava_qwen"))
    parts["tokenizer"].save_pretrained(llava)

    caplog.set_level("INFO")
    model, processor = convert_chartwiz_llava_to_hf.convert_llava_to_chartwiz(
        str(llava), output_dir=str(tmp_path / "out"), max_patches=MAX_PATCHES, chat_template="vicuna_v1"
    )
    assert "Pix2Struct's text decoder" in caplog.text and "tied to the input embeddings" in caplog.text
    assert f"Used {len(parts['encoder'].state_dict())} weights from {deplot}" in caplog.text

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert model.config.text_config.model_type == "qwen2" and model.config.projector_type == "linear"
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert processor.chat_template == load_chat_template("vicuna_v1")
    assert_matches_original(model, processor, original, generate=False)


def save_sharded_bin(model, directory, shards: int = 3):
    """`model` as the original's sharded `pytorch_model-*.bin` files with their index, written by hand:
    transformers 5 saves safetensors only."""
    os.makedirs(directory, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    keys = list(state)
    weight_map = {}
    for index in range(shards):
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key] for key in keys[index::shards]}
        torch.save(part, os.path.join(directory, name))
        weight_map.update(dict.fromkeys(part, name))
    write_json(os.path.join(directory, "pytorch_model.bin.index.json"), {"metadata": {}, "weight_map": weight_map})


def test_stage1_side_file_on_the_base_language_model(parts, tmp_path, capsys):
    """`mm_projector.bin` + a Mistral base saved as sharded `.bin`, the tower from a vision-only checkpoint."""
    original = build_original(parts, kind="mistral")
    base = tmp_path / "synatra"
    save_sharded_bin(original.language_model, base)
    parts["tokenizer"].save_pretrained(base)
    assert os.path.exists(base / "pytorch_model.bin.index.json")
    stage1 = tmp_path / "stage1"
    os.makedirs(stage1)
    projector = {f"model.mm_projector.{key}": value for key, value in original.projector.state_dict().items()}
    torch.save(projector, stage1 / "mm_projector.bin")
    # mm_vision_tower names a Hub checkpoint that is out of reach offline: --vision stands in for it.
    config = llava_config(original.language_model, "nuua/ko-deplot", "mlp2x_gelu", "llava_mistral")
    write_json(stage1 / "config.json", config)

    argv = ["--llava", str(stage1), "--mm-projector", str(stage1 / "mm_projector.bin"), "--text", str(base)]
    argv += ["--vision", str(parts["root"] / "deplot-encoder"), "--out", str(tmp_path / "out")]
    assert convert_chartwiz_llava_to_hf.main([*argv, "--max-patches", str(MAX_PATCHES)]) == 0
    assert "error" not in capsys.readouterr().err

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert model.config.text_config.model_type == "mistral"
    assert_matches_original(model, processor, original)


def write_lora_run(tmp_path, parts, adapter_format: str):
    """A LoRA run: the base LM saved plainly, the adapter, `non_lora_trainables.bin` and config.json beside it."""
    original = build_original(parts, seed=2)
    base = tmp_path / "base"
    original.language_model.save_pretrained(base)
    parts["tokenizer"].save_pretrained(base)
    torch.manual_seed(3)
    lora_config = LoraConfig(
        r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(copy.deepcopy(original.language_model), lora_config)
    run = tmp_path / "lora-run"
    peft_model.save_pretrained(run, safe_serialization=adapter_format == "safetensors")
    non_lora = {
        f"base_model.model.model.mm_projector.{key}": value for key, value in original.projector.state_dict().items()
    }
    torch.save(non_lora, run / "non_lora_trainables.bin")
    deplot = str(parts["root"] / "deplot")
    write_json(run / "config.json", llava_config(original.language_model, deplot, "mlp2x_gelu"))
    # The original merged the adapter into the LM; its unmerged forward pass is the same function.
    return Original(original.encoder, original.projector, peft_model), original, base, run


@pytest.mark.parametrize("adapter_format", ["bin", "safetensors"])
def test_lora_run_is_merged_with_peft(parts, tmp_path, adapter_format):
    reference, base_only, base, run = write_lora_run(tmp_path, parts, adapter_format)
    assert os.path.exists(run / f"adapter_model.{adapter_format}")
    out = tmp_path / "out"
    argv = ["convert", "--llava", str(run), "--lora", str(run), "--non-lora", str(run / "non_lora_trainables.bin")]
    assert main([*argv, "--text", str(base), "--out", str(out), "--max-patches", str(MAX_PATCHES)]) == 0
    assert not os.path.exists(out / "adapter")

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert not any("lora" in name for name in model.state_dict())
    assert_matches_original(model, processor, reference)
    # The adapter changed the answer: without it the logits are the base model's.
    _, inputs = chart_inputs(processor)
    ids = original_ids(inputs["input_ids"], model.config.image_token_id)
    base_logits = base_only.logits(ids, inputs["pixel_values"], inputs["pixel_attention_mask"])
    assert not torch.allclose(model(**inputs).logits[..., : base_logits.shape[-1]], base_logits, atol=1e-3)


def test_lora_adapter_kept_unmerged_loads_with_load_chartwiz(parts, tmp_path):
    reference, base_only, base, run = write_lora_run(tmp_path, parts, "safetensors")
    out = tmp_path / "out"
    argv = ["convert", "--llava", str(run), "--lora", str(run), "--text", str(base), "--keep-adapter"]
    assert main([*argv, "--out", str(out), "--max-patches", str(MAX_PATCHES)]) == 0
    with open(out / "adapter" / "adapter_config.json", encoding="utf-8") as file:
        adapter_config = json.load(file)
    assert adapter_config["target_modules"].startswith(r"model\.language_model\.")
    assert adapter_config["base_model_name_or_path"] == str(out)

    model, processor = load_chartwiz(str(out), adapter=str(out / "adapter"))
    assert_matches_original(model, processor, reference, generate=False)
    base_model, _ = load_chartwiz(str(out))
    assert_matches_original(base_model, processor, base_only, generate=False)


def test_push_to_hub_uploads_the_folder_that_loads_with_the_auto_classes(parts, tmp_path, monkeypatch):
    original = build_original(parts)
    write_full_checkpoint(tmp_path / "llava", parts, original)
    hub, calls = tmp_path / "hub", []

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, private))

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        calls.append(("upload_folder", repo_id, commit_message))
        shutil.copytree(folder_path, hub / repo_id)

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    argv = ["convert", "--llava", str(tmp_path / "llava"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--max-patches", str(MAX_PATCHES), "--push-to-hub", "me/chartwiz", "--private"]) == 0
    assert [call[:2] for call in calls] == [("create_repo", "me/chartwiz"), ("upload_folder", "me/chartwiz")]
    assert calls[0][2] is True

    uploaded = hub / "me" / "chartwiz"
    model = AutoModelForImageTextToText.from_pretrained(uploaded).eval()
    processor = AutoProcessor.from_pretrained(uploaded)
    assert_matches_original(model, processor, original, generate=False)


class Pwned:
    """A pickle that runs code when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def corrupt(kind: str):
    """Writes one broken original checkpoint; returns the text the one-line error must contain."""

    def apply(directory, parts, original):
        if kind == "mm_hidden_size":
            write_full_checkpoint(directory, parts, original, mm_hidden_size=1024)
            return "mm_hidden_size 1024"
        if kind == "projector_type":
            write_full_checkpoint(directory, parts, original, mm_projector_type="mlp2x_relu")
            return "Unknown projector_type 'mlp2x_relu'"
        if kind == "exaone":
            write_full_checkpoint(directory, parts, original, model_type="llava_exaone")
            return "'llava_exaone' is not supported"
        if kind == "tower_out_of_reach":
            write_full_checkpoint(directory, parts, original, mm_vision_tower="nuua/ko-deplot")
            return "pass --vision"
        if kind == "im_start_end":
            write_full_checkpoint(directory, parts, original, mm_use_im_start_end=True)
            return "mm_use_im_start_end"
        state_dict = write_full_checkpoint(directory, parts, original)
        path = os.path.join(directory, "pytorch_model.bin")
        if kind == "missing_key":
            del state_dict["model.layers.1.mlp.up_proj.weight"]
            torch.save(state_dict, path)
            return "missing weights: model.language_model.layers.*.mlp.up_proj.weight"
        if kind == "extra_key":
            state_dict["model.mm_projector.4.weight"] = torch.zeros(64, 64)
            torch.save(state_dict, path)
            return "model.mm_projector.4.weight"
        if kind == "unknown_key":
            state_dict["vision_resampler.weight"] = torch.zeros(2)
            torch.save(state_dict, path)
            return "unexpected key vision_resampler.weight"
        if kind == "shape":
            state_dict["model.mm_projector.0.weight"] = torch.zeros(48, 32)
            torch.save(state_dict, path)
            return "model.mm_projector.0.weight has shape (48, 32)"
        if kind == "pickle":
            state_dict["model.norm.weight"] = Pwned(os.path.join(directory, "pwned"))
            torch.save(state_dict, path)
            return "refusing to unpickle"
        raise AssertionError(kind)

    return apply


@pytest.mark.parametrize(
    "kind",
    ["mm_hidden_size", "projector_type", "exaone", "im_start_end", "tower_out_of_reach", "missing_key", "extra_key"]
    + ["unknown_key", "shape", "pickle"],
)
def test_bad_checkpoints_are_one_line_errors(parts, tmp_path, capsys, kind):
    original = build_original(parts)
    llava = tmp_path / "llava"
    expected = corrupt(kind)(str(llava), parts, original)
    code = main(["convert", "--llava", str(llava), "--out", str(tmp_path / "out"), "--max-patches", str(MAX_PATCHES)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("chartwiz convert: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")
    if kind == "pickle":
        assert "pytorch_model.bin" in err and not os.path.exists(llava / "pwned"), "the pickle must not run"


@pytest.mark.slow
def test_convert_refuses_a_used_folder_and_overwrite_leaves_exactly_its_files(parts, tmp_path, capsys):
    original = build_original(parts)
    write_full_checkpoint(tmp_path / "llava", parts, original)
    argv = ["convert", "--llava", str(tmp_path / "llava"), "--max-patches", str(MAX_PATCHES), "--out"]
    assert main([*argv, str(tmp_path / "fresh")]) == 0
    out = tmp_path / "out"
    out.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (out / name).write_text("{}")
    assert main([*argv, str(out)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "fresh"))
    assert main([*argv, str(tmp_path / "llava"), "--overwrite"]) == 2
    assert "which this command reads" in capsys.readouterr().err


def test_stage1_without_the_base_language_model_says_what_to_pass(parts, tmp_path, capsys):
    original = build_original(parts)
    stage1 = tmp_path / "stage1"
    os.makedirs(stage1)
    torch.save({"model.mm_projector.0.weight": torch.zeros(64, 32)}, stage1 / "mm_projector.bin")
    write_json(stage1 / "config.json", llava_config(original.language_model, str(parts["root"] / "deplot"), "linear"))
    argv = ["convert", "--llava", str(stage1), "--mm-projector", str(stage1 / "mm_projector.bin")]
    assert main([*argv, "--out", str(tmp_path / "out"), "--max-patches", str(MAX_PATCHES)]) == 2
    assert "pass --text with the base language model" in capsys.readouterr().err


def test_a_checkpoint_path_that_does_not_exist_is_named(tmp_path, capsys):
    assert main(["convert", "--llava", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err
        == f"chartwiz convert: error: {tmp_path / 'nowhere'}: no such folder, and not a Hub repo id\n"
    )


def test_weights_files_load_through_the_hub_loader_and_bad_ones_are_named(tmp_path):
    load_weights_file = convert_chartwiz_llava_to_hf.load_weights_file
    tensors = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(2)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    for name in ("model.safetensors", "pytorch_model.bin"):
        loaded = load_weights_file(str(tmp_path / name))
        assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors), name

    torn = tmp_path / "torn.safetensors"
    torn.write_bytes((tmp_path / "model.safetensors").read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"torn.safetensors: not a readable safetensors file \(") as caught:
        load_weights_file(str(torn))
    assert "\n" not in str(caught.value)
    # A pickle under a safetensors name is read as safetensors, never unpickled.
    disguised = tmp_path / "disguised.safetensors"
    torch.save({"w": Pwned(str(tmp_path / "pwned"))}, disguised)
    with pytest.raises(ValueError, match="disguised.safetensors: not a readable safetensors file"):
        load_weights_file(str(disguised))
    assert not os.path.exists(tmp_path / "pwned")

    cut = tmp_path / "cut.bin"
    cut.write_bytes((tmp_path / "pytorch_model.bin").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut.bin: not a readable PyTorch weights file"):
        load_weights_file(str(cut))
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    with pytest.raises(ValueError, match="list.bin: expected a mapping of parameter names to tensors, found list"):
        load_weights_file(str(tmp_path / "list.bin"))


def test_converted_and_composed_models_get_their_generation_settings_from_one_place():
    from types import SimpleNamespace

    from transformers import LlamaConfig

    from chartwiz_hf import compose

    text_config = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=None)
    settings = compose.chartwiz_generation_config(text_config, SimpleNamespace(pad_token_id=5), 7)
    assert (settings.bos_token_id, settings.eos_token_id, settings.pad_token_id) == (1, 2, 5)
    assert settings.suppress_tokens == [7], "never the image placeholder"
    assert convert_chartwiz_llava_to_hf.chartwiz_generation_config is compose.chartwiz_generation_config
