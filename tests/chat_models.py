"""
Tiny random checkpoints of image-text-to-text models other than ChartWiz, built offline from their configs with a
local byte-level BPE tokenizer and a ChatML chat template: LLaVA-NeXT (the architecture of Granite Vision, and the
anyres tiling of LLaVA-OneVision, VARCO-VISION-2.0's) and Gemma 3 (SigLIP and pan-and-scan).

LLaVA-OneVision and Qwen2-VL themselves cannot be built here: their processors hold a video processor, and every
video processor of transformers (4.57 and 5.x) needs torchvision, which does not install beside the CPU torch of these
environments; their image processors have PIL versions, their video processors none.
"""

import torch
import transformers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from chartwiz.models.tiny import train_byte_level_bpe


END_OF_TURN = "<|im_end|>"
PAD = "<pad>"
# A ChatML template (Qwen's turns, as VARCO-VISION-2.0 has them) with the chart where the content list puts it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ IMAGE }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The language model: two layers, heads of 32 (a size vLLM's CPU attention takes), a context of 2048.
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
# Korean chart language and ChatML's words, for the tokenizer's merges; other text still encodes byte by byte.
CORPUS = [
    "system user assistant 표로 답하세요. 한 문장으로 짧게 답하세요.",
    "이 차트를 테이블 정보로 변경해줘. 이 차트를 자세히 설명해줘. 이 차트의 내용을 요약해줘.",
    "TITLE | 연도별 점유율\n| 2021 | 2022 | 2023\nA사 | 30% | 35.5% | 40%\nB사 | 70% | 64.5% | 60%",
    "가장 큰 값은 무엇인가요? 가장 작은 값은 무엇인가요? 두 값의 차이는 얼마인가요? 합계는 얼마인가요?",
    "매출액 영업이익 점유율 증가율 비율 단위 만 명 억 원 천 톤 % 1월 2월 3월 2022년 2023년 입니다 있습니다",
]
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def chat_tokenizer(**image_tokens) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ChartWiz's tiny Korean corpus, with ChatML's turn tokens and the model's image tokens."""
    special = ["<|endoftext|>", PAD, "<|im_start|>", END_OF_TURN, *image_tokens.values()]
    return train_byte_level_bpe(
        CORPUS * 4,
        600,
        special,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        extra_special_tokens=image_tokens,
        model_max_length=TEXT["max_position_embeddings"],
        model_input_names=["input_ids", "attention_mask"],
    )


def _pil(name: str):
    # transformers 5 names the torchvision image processors plainly and their PIL twins `...Pil`; 4.57 the PIL ones.
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _save(model, processor, tokenizer, output_dir: str):
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.eval().save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def make_tiny_llava_next(output_dir: str, seed: int = 0) -> str:
    """A LLaVA-NeXT of a CLIP encoder (32 x 32 tiles of 8 x 8 patches) and a Qwen2 language model."""
    torch.manual_seed(seed)
    tokenizer = chat_tokenizer(image_token="<image>")
    config = transformers.LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, **VISION},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **TEXT},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=_pil("LlavaNextImageProcessor")(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_grid_pinpoints=config.image_grid_pinpoints,
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
        chat_template=CHAT_TEMPLATE.replace("IMAGE", "'<image>\\n'"),
    )
    return _save(transformers.LlavaNextForConditionalGeneration(config), processor, tokenizer, output_dir)


def make_tiny_gemma3(output_dir: str, seed: int = 0) -> str:
    """A Gemma 3 of a SigLIP encoder (64 x 64 images, pooled to 16 tokens) and its own language model."""
    torch.manual_seed(seed)
    tokenizer = chat_tokenizer(
        boi_token="<start_of_image>", image_token="<image_soft_token>", eoi_token="<end_of_image>"
    )
    config = transformers.Gemma3Config(
        # Without SigLIP's pooling head, as Gemma 3's checkpoints: its features go to the projector unpooled.
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 64,
            "patch_size": 8,
            "vision_use_head": False,
            **VISION,
        },
        text_config={"vocab_size": len(tokenizer), "sliding_window": 64, "query_pre_attn_scalar": 32, **TEXT},
        mm_tokens_per_image=16,
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
    )
    processor = transformers.Gemma3Processor(
        image_processor=_pil("Gemma3ImageProcessor")(size={"height": 64, "width": 64}),
        tokenizer=tokenizer,
        image_seq_length=16,
        chat_template=CHAT_TEMPLATE.replace("IMAGE", "'<start_of_image>'"),
    )
    return _save(transformers.Gemma3ForConditionalGeneration(config), processor, tokenizer, output_dir)


# name -> (the transformers class it needs, its builder)
ARCHITECTURES = {
    "llava_next": ("LlavaNextForConditionalGeneration", make_tiny_llava_next),
    "gemma3": ("Gemma3ForConditionalGeneration", make_tiny_gemma3),
}


def missing_architecture(name: str):
    """Why this transformers cannot build `name`, or None where it can."""
    needed = ARCHITECTURES[name][0]
    if not hasattr(transformers, needed):
        return f"transformers {transformers.__version__} has no {needed}"
    return None


def make_tiny_chat_model(name: str, output_dir: str, seed: int = 0) -> str:
    return ARCHITECTURES[name][1](output_dir, seed)
