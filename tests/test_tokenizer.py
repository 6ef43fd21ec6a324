"""
One tokenizer, loaded one way: a SentencePiece language model (the 7B recipe's Mistral has one) has a slow and a
fast tokenizer on transformers 4.57, and they split text differently around special tokens. Training, merging and
answering all load the fast one, so the ids a model answers on are the ids it was trained on.
"""

import io
import os

import pytest
import torch
import transformers

from chartwiz.inference import load_processor, prepare_inputs
from chartwiz.models.tiny import _TOKENIZER_CORPUS, tiny_configs
from chartwiz_hf import ChartWizConfig, ChartWizForConditionalGeneration, ChartWizImageProcessor, ChartWizProcessor
from chartwiz_hf.chat_templates import load_chat_template
from chartwiz_hf.compose import add_image_token

from .conftest import draw_chart


QUESTIONS = ["가장 큰 값은 무엇인가요?", "이 차트를 테이블 정보로 변경해줘.", "2021 대비 2023 A사 점유율 증가는?"]


def train_sentencepiece_model(path: str) -> None:
    """A small BPE SentencePiece model with byte fallback, as Llama and Mistral ship, trained offline."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_TOKENIZER_CORPUS * 8),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with open(path, "wb") as file:
        file.write(model.getvalue())


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
    """A tiny ChartWiz checkpoint whose tokenizer is a Llama SentencePiece tokenizer (slow and fast on 4.57)."""
    root = tmp_path_factory.mktemp("sentencepiece")
    train_sentencepiece_model(str(root / "tokenizer.model"))
    # transformers 4.57: the slow, sentencepiece-backed class; 5: the only, tokenizers-backed one.
    tokenizer = transformers.LlamaTokenizer(vocab_file=str(root / "tokenizer.model"), legacy=False)
    vision_config, text_config = tiny_configs(len(tokenizer) + 1, max_patches=16, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    text_model = transformers.LlamaForCausalLM(text_config)
    image_token_id = add_image_token(tokenizer, text_model)
    config = ChartWizConfig(vision_config, text_config, image_token_id=image_token_id, max_patches=16)
    model = ChartWizForConditionalGeneration(config).eval()
    processor = ChartWizProcessor(
        ChartWizImageProcessor(max_patches=16), tokenizer, chat_template=load_chat_template("synatra_mini")
    )
    directory = root / "chartwiz"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def training_prompt_ids(processor, image, question: str) -> list[int]:
    """The prompt ids of a training row as the recipe's collator (TRL's, plus the BOS) builds them for `SFTTrainer`."""
    row = {
        "image": image,
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": "30%"}],
    }
    from chartwiz.training import ChartWizVisionCollator

    batch = ChartWizVisionCollator(processor, completion_only_loss=True)([row])
    prompt = (batch["attention_mask"][0] == 1) & (batch["labels"][0] == -100)
    return batch["input_ids"][0][prompt].tolist()


def test_training_merging_and_answering_load_the_same_fast_tokenizer(sentencepiece_dir, tmp_path):
    from .test_recipes import FINETUNE, fast, sft

    answering = load_processor(sentencepiece_dir).tokenizer
    assert answering.is_fast
    _, training_args, model_args = fast(FINETUNE, sentencepiece_dir, str(tmp_path / "data"), tmp_path / "out")
    _, training_processor = sft.load_model_and_processor(model_args, training_args)
    assert type(training_processor.tokenizer) is type(answering)
    text = f"USER: <image>\n{QUESTIONS[0]} ASSISTANT: 30%</s>USER: {QUESTIONS[1]} ASSISTANT:"
    assert training_processor.tokenizer(text)["input_ids"] == answering(text)["input_ids"]


@pytest.mark.parametrize("question", QUESTIONS)
def test_training_rows_and_inference_prompts_are_the_same_ids(sentencepiece_dir, question):
    processor = load_processor(sentencepiece_dir)
    image = draw_chart()
    trained = training_prompt_ids(processor, image, question)
    answered = prepare_inputs(processor, [image], [question])["input_ids"][0].tolist()
    assert answered == trained
    assert trained.count(processor.image_token_id) == processor.image_seq_length


@pytest.mark.skipif(
    not hasattr(transformers, "LlamaTokenizerFast") or transformers.LlamaTokenizerFast is transformers.LlamaTokenizer,
    reason="transformers 5 has one Llama tokenizer class; test_transformers_5_gives_the_fast_tokenizer_however_asked",
)
def test_the_slow_twin_on_transformers_4_would_train_on_other_ids(sentencepiece_dir):
    fast_processor = load_processor(sentencepiece_dir)
    slow_processor = transformers.AutoProcessor.from_pretrained(sentencepiece_dir, use_fast=False)
    assert not slow_processor.tokenizer.is_fast
    image = draw_chart()
    differs = [
        training_prompt_ids(slow_processor, image, question) != training_prompt_ids(fast_processor, image, question)
        for question in QUESTIONS
    ]
    assert any(differs), "the hazard this file guards against: the two classes split the prompt differently"


@pytest.mark.skipif(
    hasattr(transformers, "LlamaTokenizerFast") and transformers.LlamaTokenizerFast is not transformers.LlamaTokenizer,
    reason="transformers 4.57 has a slow twin; test_the_slow_twin_on_transformers_4_would_train_on_other_ids",
)
def test_transformers_5_gives_the_fast_tokenizer_however_asked(sentencepiece_dir):
    asked_slow = transformers.AutoTokenizer.from_pretrained(sentencepiece_dir, use_fast=False)
    assert asked_slow.is_fast
    text = f"USER: <image>\n{QUESTIONS[0]} ASSISTANT:"
    assert asked_slow(text)["input_ids"] == load_processor(sentencepiece_dir).tokenizer(text)["input_ids"]
    assert os.path.isfile(os.path.join(sentencepiece_dir, "tokenizer.json"))
