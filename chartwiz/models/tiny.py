"""A tiny random ChartWiz made offline in seconds, for tests, benchmarks and trying the package."""

import os
from collections.abc import Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Pix2StructVisionConfig,
    PreTrainedTokenizerFast,
)

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizValueError
from chartwiz.names import IMAGE_TOKEN
from chartwiz_hf.chat_templates import load_chat_template
from chartwiz_hf.configuration_chartwiz import ChartWizConfig
from chartwiz_hf.image_processing_chartwiz import ChartWizImageProcessor
from chartwiz_hf.modeling_chartwiz import ChartWizForConditionalGeneration
from chartwiz_hf.processing_chartwiz import ChartWizProcessor


EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
# The smallest head size vLLM's CPU attention takes (it takes 32, 64, 80, 96, ...), so tiny models serve there too.
ATTENTION_HEAD_SIZE = 32

# Enough Korean chart language for byte-level BPE merges; any other text still encodes through the byte fallback.
_TOKENIZER_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: 이 차트를 테이블 정보로 변경해줘.",
    "이 차트를 자세히 설명해줘. 이 차트의 내용을 요약해줘.",
    "TITLE | 연도별 점유율\n| 2021 | 2022 | 2023\nA사 | 30% | 35.5% | 40%\nB사 | 70% | 64.5% | 60%",
    "지역별 인구 서울 부산 대구 인천 광주 대전 울산 세종 경기 강원 충북 충남 전북 전남 경북 경남 제주",
    "가장 큰 값은 무엇인가요? 가장 작은 값은 무엇인가요? 두 값의 차이는 얼마인가요? 합계는 얼마인가요?",
    "매출액 영업이익 순이익 점유율 증가율 감소 증가 비율 단위 만 명 억 원 천 톤 % 개 건 명",
    "1월 2월 3월 4월 5월 6월 7월 8월 9월 10월 11월 12월 2019년 2020년 2021년 2022년 2023년 2024년",
    "이 차트는 막대형 차트로, 항목별 값을 보여줍니다. 선형 차트 원형 차트 방사형 차트 누적 막대 100% 누적",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 0.5 12.5 3.14 입니다. 입니다 있습니다 보입니다 높습니다 낮습니다",
    "Generate underlying data table of the figure below: chart table value category legend title unit",
]


def dataset_corpus(dataset_dir: str, split: str = "train") -> Iterator[str]:
    """
    The texts (prompts and completions) of one split of every config a `chartwiz data build` folder holds: a corpus
    for training a tokenizer on the same language the model will be trained on.
    """
    from datasets import get_dataset_config_names, load_dataset

    if not os.path.isdir(dataset_dir):
        raise ChartWizFileNotFoundError(f"{dataset_dir}: no such folder (a `chartwiz data build` output)")
    configs = [name for name in get_dataset_config_names(dataset_dir) if name in ("pretrain", "finetune", "gpt")]
    if not configs:
        raise ChartWizValueError(
            f"{dataset_dir}: no pretrain, finetune or gpt config; build it with `chartwiz data build`."
        )
    for config in configs:
        rows = load_dataset(dataset_dir, config, split=split).select_columns(["prompt", "completion"])
        for row in rows:
            for message in (*row["prompt"], *row["completion"]):
                if message["content"]:
                    yield message["content"]


def train_byte_level_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str], **tokenizer_kwargs
) -> PreTrainedTokenizerFast:
    """
    The tokenizer of every tiny model here: byte-level BPE trained on `texts` with `special_tokens`, so any text still
    encodes through the 256-byte alphabet; `tokenizer_kwargs` go to `PreTrainedTokenizerFast` (`eos_token`, ...).
    """
    smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens)
    if vocab_size < smallest:
        raise ChartWizValueError(
            f"vocab_size must be at least {smallest} (the 256 bytes and {len(special_tokens)} special tokens), got "
            f"{vocab_size}."
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_kwargs)


def build_tiny_tokenizer(
    vocab_size: int = 600, model_max_length: int = 1024, corpus: Iterable[str] | None = None
) -> PreTrainedTokenizerFast:
    """
    Byte-level BPE with `<|endoftext|>`, `<pad>` and `<image>`, trained on a built-in Korean chart corpus and, when
    given, on `corpus` (e.g. `dataset_corpus(...)`); any other text still encodes through the byte alphabet.
    """
    texts = _TOKENIZER_CORPUS * 4 if corpus is None else [*_TOKENIZER_CORPUS, *corpus]
    return train_byte_level_bpe(
        texts,
        vocab_size,
        [EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN],
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=model_max_length,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_configs(
    vocab_size: int,
    max_patches: int = 64,
    max_position_embeddings: int = 1024,
    hidden_size: int = 64,
    **text_overrides,
):
    """
    The vision and text configs of the tiny model (the default sizes are the ones the tests use): a two-layer Llama
    of width `hidden_size` with attention heads of 32 (half as many key/value heads), and a two-layer Pix2Struct
    encoder of half that width.
    """
    if hidden_size < ATTENTION_HEAD_SIZE or hidden_size % ATTENTION_HEAD_SIZE:
        raise ChartWizValueError(
            f"hidden_size must be a multiple of {ATTENTION_HEAD_SIZE} (the width of an attention head), got "
            f"{hidden_size}."
        )
    num_heads = hidden_size // ATTENTION_HEAD_SIZE
    vision_config = Pix2StructVisionConfig(
        hidden_size=hidden_size // 2,
        patch_embed_hidden_size=768,
        d_ff=hidden_size,
        d_kv=hidden_size // 4,
        num_hidden_layers=2,
        num_attention_heads=2,
        seq_len=max(max_patches + 1, 128),
        # Pix2StructVisionConfig's default of 1e-10 leaves the patch projection at zero, so every chart would map to
        # the same features; 0.02 is what a full Pix2StructConfig gives its encoder.
        initializer_range=0.02,
    )
    text_kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": num_heads,
        "num_key_value_heads": max(1, num_heads // 2),
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": False,
    }
    text_kwargs.update(text_overrides)
    return vision_config, LlamaConfig(**text_kwargs)


def make_tiny_chartwiz(
    output_dir: str | None = None,
    seed: int = 0,
    max_patches: int = 64,
    projector_type: str = "mlp2x_gelu",
    hidden_size: int = 64,
    vocab_size: int = 600,
    corpus: Iterable[str] | None = None,
) -> tuple[ChartWizForConditionalGeneration, ChartWizProcessor]:
    """
    Builds (and, with `output_dir`, saves) a tiny random ChartWiz model and its processor. The tokenizer is trained on
    a built-in corpus, or also on `corpus` (the texts the model will be trained on) with `vocab_size` tokens.
    """
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, corpus=corpus)
    vision_config, text_config = tiny_configs(
        len(tokenizer),
        max_patches=max_patches,
        hidden_size=hidden_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    tokenizer.model_max_length = text_config.max_position_embeddings
    config = ChartWizConfig(
        vision_config=vision_config,
        text_config=text_config,
        projector_type=projector_type,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        max_patches=max_patches,
    )
    model = ChartWizForConditionalGeneration(config)
    processor = ChartWizProcessor(
        image_processor=ChartWizImageProcessor(max_patches=max_patches),
        tokenizer=tokenizer,
        chat_template=load_chat_template("synatra_mini"),
    )
    return _finish(model, processor, tokenizer, output_dir), processor


def _finish(model, processor, tokenizer, output_dir: str | None):
    """
    Greedy decoding by default, never the `<image>` placeholder (a text-only prompt stays answerable), and both halves
    saved to `output_dir` when given.
    """
    model.eval()
    image_token_id = getattr(model.config, "image_token_id", None)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        suppress_tokens=None if image_token_id is None else [image_token_id],
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model


def make_tiny_language_model(
    output_dir: str | None = None,
    seed: int = 0,
    hidden_size: int = 128,
    vocab_size: int = 600,
    corpus: Iterable[str] | None = None,
    head_dim: int = 32,
    num_hidden_layers: int = 2,
    tokenizer: PreTrainedTokenizerFast | None = None,
    initializer_range: float = 0.02,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """
    Builds (and, with `output_dir`, saves) the language model half of the tiny ChartWiz alone: a random Llama of
    `num_hidden_layers` layers with attention heads of `head_dim` and its tokenizer (`tokenizer`, or one trained on
    `corpus` when given, as in `make_tiny_chartwiz`), a `--text` for `chartwiz compose` beside a pretrained Pix2Struct
    encoder. `initializer_range` is the standard deviation of its initial weights: Llama's 0.02 starts every attention
    logit of a model this narrow near zero, and composed and trained on tables, a language model pretrained from it
    read far fewer titles in the same steps than one started at 0.1 (docs/reading.md).
    """
    if hidden_size % head_dim or hidden_size // head_dim < 2:
        raise ChartWizValueError(
            f"hidden_size must be a multiple of head_dim={head_dim} of at least two heads, got {hidden_size}."
        )
    torch.manual_seed(seed)
    if tokenizer is None:
        tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, corpus=corpus)
    heads = hidden_size // head_dim
    _, text_config = tiny_configs(
        len(tokenizer),
        hidden_size=hidden_size,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        num_hidden_layers=num_hidden_layers,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=initializer_range,
    )
    tokenizer.model_max_length = text_config.max_position_embeddings
    return _finish(LlamaForCausalLM(text_config), tokenizer, tokenizer, output_dir), tokenizer


def make_language_model_like(
    language_model: str, output_dir: str | None = None, seed: int = 0, initializer_range: float = 0.02
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """
    A tiny language model of the shape (width, heads, layers) and tokenizer of the saved one in `language_model`, with
    new weights: its weights are not read. Composed and trained on tables, new weights at 0.1 learnt to read a chart's
    table in far fewer steps than the pretrained tiny language model (docs/reading.md).
    """
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(language_model)
    if config.model_type != "llama":
        raise ChartWizValueError(
            f"{language_model}: a {config.model_type!r} language model; new weights are made for tiny Llama ones only."
        )
    return make_tiny_language_model(
        output_dir,
        seed=seed,
        hidden_size=config.hidden_size,
        head_dim=config.head_dim,
        num_hidden_layers=config.num_hidden_layers,
        tokenizer=AutoTokenizer.from_pretrained(language_model),
        initializer_range=initializer_range,
    )


__all__ = [
    "build_tiny_tokenizer",
    "dataset_corpus",
    "make_language_model_like",
    "make_tiny_chartwiz",
    "make_tiny_language_model",
    "tiny_configs",
    "train_byte_level_bpe",
]
