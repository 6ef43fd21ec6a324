"""Model sizes for the benchmarks: the tiny test model, a small CPU model and a ~100M-parameter one."""

from transformers import GenerationConfig, LlamaConfig, Pix2StructVisionConfig

from chartwiz.models.tiny import build_tiny_tokenizer, make_tiny_chartwiz
from chartwiz_hf import ChartWizConfig, ChartWizForConditionalGeneration, ChartWizImageProcessor, ChartWizProcessor
from chartwiz_hf.chat_templates import load_chat_template


SIZES = {
    "small": {"vision": (128, 2, 4), "text": (256, 4, 8, 688), "max_patches": 512},
    "100m": {"vision": (512, 6, 8), "text": (768, 10, 12, 2048), "max_patches": 512},
    # The layers of ChartWiz itself, for GPUs: a Pix2Struct-base-wide encoder and the 1.3B Llama (tiny vocabulary).
    "1b3": {"vision": (768, 12, 12), "text": (2048, 24, 32, 5632), "max_patches": 512},
}


def llama_1b3_config(**overrides) -> LlamaConfig:
    """The layer sizes of Synatra-42dot-1.3B (42dot LLM 1.3B, a Llama); `overrides` set the vocabulary and tokens."""
    sizes = {
        "vocab_size": 50304,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**{**sizes, **overrides})


def make_model(name: str, output_dir: str | None = None, max_patches: int | None = None):
    if name == "tiny":
        return make_tiny_chartwiz(output_dir, max_patches=max_patches or 64)
    sizes = {**SIZES[name], "max_patches": max_patches or SIZES[name]["max_patches"]}
    tokenizer = build_tiny_tokenizer()
    vision_hidden, vision_layers, vision_heads = sizes["vision"]
    hidden, layers, heads, intermediate = sizes["text"]
    vision_config = Pix2StructVisionConfig(
        hidden_size=vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        d_kv=vision_hidden // vision_heads,
        d_ff=vision_hidden * 4,
        patch_embed_hidden_size=768,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    tokenizer.model_max_length = 2048
    config = ChartWizConfig(
        vision_config,
        text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        max_patches=sizes["max_patches"],
    )
    model = ChartWizForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    image_processor = ChartWizImageProcessor(max_patches=sizes["max_patches"])
    processor = ChartWizProcessor(image_processor, tokenizer, chat_template=load_chat_template("synatra_mini"))
    if output_dir is not None:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor
