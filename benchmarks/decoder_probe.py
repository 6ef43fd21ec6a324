"""
Can a dedicated reader turn a ChartWiz checkpoint's frozen encoder output into tables, and how fast? A fresh
Pix2Struct text decoder (cross-attention to the encoder's patches, the reader DePlot itself uses) is trained on the
`pretrain` tables of a `chartwiz data build` folder, with the encoder frozen, batches drawn at random as the recipes
draw them, and its greedy tables are scored by RMS F1 on held-out charts beside blank charts and another row's chart.

It answers where a table's content is lost: if this reader learns the tables in a few hundred steps while ChartWiz's
language model, trained on the same rows by `recipes/sft_chartwiz.py`, does not, the encoder's output holds what the
language model fails to take (docs/reading.md gives both). `--reader prefix` swaps the cross-attention decoder for
ChartWiz's own layout, fresh and as small: a projector and a Llama that reads the projected patches as the first
tokens of its sequence. Each score gives RMS F1, its cells without the title (`rms_cells_f1`) and the share of titles
read (`title_match`), since a reader of titles alone scores well on RMS F1 (docs/metrics.md).

    python benchmarks/decoder_probe.py --model examples/tiny-chartwiz --train outputs/tiny-chartwiz-work/charts \
        --test outputs/charts --steps 400 1200
    # the same reader writing DePlot's tokens instead of the language model's:
    python benchmarks/decoder_probe.py --model examples/tiny-chartwiz --tokenizer examples/tiny-deplot ...

The images go through the checkpoint's own processor, as every ChartWiz entry point builds them.
"""

import argparse
import json
import math
import random
import time

import torch
from datasets import load_dataset
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
    get_cosine_schedule_with_warmup,
)

import chartwiz_hf  # noqa: F401  (registers ChartWiz with the Auto classes)
from chartwiz.evaluation.table_metrics import rms
from chartwiz_hf.configuration_chartwiz import ChartWizConfig
from chartwiz_hf.modeling_chartwiz import ChartWizMultiModalProjector


def reader_for(chartwiz, tokenizer, layers: int, seed: int) -> Pix2StructForConditionalGeneration:
    """
    A Pix2Struct model whose encoder is the checkpoint's (frozen, eval mode) and whose text decoder is fresh: as wide
    as the encoder, `layers` deep, writing `tokenizer`'s ids.
    """
    vision = chartwiz.config.vision_config
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": vision.hidden_size,
        "d_kv": vision.d_kv,
        "d_ff": vision.d_ff,
        "num_layers": layers,
        "num_heads": vision.num_attention_heads,
        "pad_token_id": tokenizer.pad_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "dropout_rate": 0.0,
    }
    config = Pix2StructConfig(text_config=text_config, vision_config=vision.to_dict(), is_vqa=True)
    torch.manual_seed(seed)
    reader = Pix2StructForConditionalGeneration(config)
    reader.encoder.load_state_dict(chartwiz.model.vision_tower.state_dict())
    reader.encoder.requires_grad_(False)
    return reader


class PrefixReader(torch.nn.Module):
    """
    ChartWiz's layout as a fresh reader of the same size as `reader_for`'s: the checkpoint's encoder (frozen, eval
    mode), a fresh projector, and a fresh Llama as wide as the encoder, `layers` deep, whose sequence starts with the
    projected patches (every patch attended, as ChartWiz attends its image tokens) and goes on with the table. No
    prompt: the only difference from the cross-attention reader is how the text reaches the patches.
    """

    def __init__(self, chartwiz, tokenizer, layers: int, seed: int, initializer_range: float = 0.02):
        super().__init__()
        vision = chartwiz.config.vision_config
        torch.manual_seed(seed)
        self.encoder = chartwiz.model.vision_tower
        self.encoder.requires_grad_(False)
        language_config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=vision.hidden_size,
            intermediate_size=vision.d_ff,
            num_hidden_layers=layers,
            num_attention_heads=vision.num_attention_heads,
            num_key_value_heads=vision.num_attention_heads,
            head_dim=vision.hidden_size // vision.num_attention_heads,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            initializer_range=initializer_range,
        )
        self.language_model = LlamaForCausalLM(language_config)
        projector_config = ChartWizConfig(
            vision_config=vision.to_dict(),
            text_config=language_config.to_dict(),
            projector_type="mlp2x_gelu",
            max_patches=chartwiz.config.max_patches,
        )
        self.projector = ChartWizMultiModalProjector(projector_config)
        self.pad_token_id = tokenizer.pad_token_id

    def _prefix(self, flattened_patches, attention_mask):
        patches = self.encoder(flattened_patches=flattened_patches, attention_mask=attention_mask).last_hidden_state
        return self.projector(patches)

    def forward(self, flattened_patches, attention_mask, labels):
        prefix = self._prefix(flattened_patches, attention_mask)
        tokens = self.language_model.get_input_embeddings()(labels.masked_fill(labels == -100, self.pad_token_id))
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), (labels != -100).long()], dim=1)
        labels = torch.cat([torch.full(prefix.shape[:2], -100), labels], dim=1)
        embeds = torch.cat([prefix, tokens], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(self, flattened_patches, attention_mask, max_new_tokens):
        prefix = self._prefix(flattened_patches, attention_mask)
        return self.language_model.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
        )


def completion(row) -> str:
    return row["completion"][0]["content"]


def score(reader, image_processor, tokenizer, rows, ablation: str, max_new_tokens: int, batch_size: int = 20):
    """
    RMS F1, its cells alone and the titles read, of the reader's greedy tables for `rows`, shown their charts, blank
    charts or the next row's chart; and the first table.
    """
    images = [row["image"].convert("RGB") for row in rows]
    if ablation == "blank":
        images = [Image.new("RGB", image.size, "white") for image in images]
    elif ablation == "shuffled":
        images = images[1:] + images[:1]
    tables = []
    reader.eval()
    for start in range(0, len(images), batch_size):
        inputs = image_processor(images=images[start : start + batch_size], return_tensors="pt")
        with torch.no_grad():
            output = reader.generate(
                flattened_patches=inputs["pixel_values"],
                attention_mask=inputs["pixel_attention_mask"],
                max_new_tokens=max_new_tokens,
            )
        tables += tokenizer.batch_decode(output, skip_special_tokens=True)
    reader.train()
    reader.encoder.eval()
    scores = rms([completion(row) for row in rows], tables)
    return {key: round(scores[key], 1) for key in ("rms_f1", "rms_cells_f1", "title_match")}, tables[0]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a ChartWiz checkpoint folder: its encoder is read")
    parser.add_argument("--train", required=True, help="a `chartwiz data build` folder: its pretrain train split")
    parser.add_argument("--test", required=True, help="a `chartwiz data build` folder: its pretrain test split")
    parser.add_argument("--tokenizer", default=None, help="the tokenizer the reader writes (default: the model's)")
    parser.add_argument("--steps", type=int, nargs="+", default=[400], help="score after each of these steps")
    parser.add_argument(
        "--reader",
        choices=("cross-attention", "prefix"),
        default="cross-attention",
        help="a Pix2Struct decoder attending to the patches, or ChartWiz's layout (the patches as a Llama's prefix)",
    )
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (the tiny DePlot's: 2)")
    parser.add_argument(
        "--initializer-range",
        type=float,
        default=0.02,
        help="standard deviation of the prefix reader's initial weights (Llama's default 0.02)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--test-charts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    chartwiz = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32)
    image_processor = AutoProcessor.from_pretrained(args.model).image_processor
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    if args.reader == "prefix":
        reader = PrefixReader(chartwiz, tokenizer, args.layers, args.seed, args.initializer_range)
    else:
        reader = reader_for(chartwiz, tokenizer, args.layers, args.seed)
    del chartwiz
    train = load_dataset(args.train, "pretrain", split="train")
    test = load_dataset(args.test, "pretrain", split="test")
    test = test.select(range(min(args.test_charts, len(test))))

    total = max(args.steps)
    trained = [parameter for parameter in reader.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=0.0)
    # The recipes' schedule (lr_scheduler_type cosine, warmup_ratio 0.03), from the function their Trainer uses.
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * total), total)
    order = list(range(len(train)))
    random.Random(args.seed).shuffle(order)
    results, started = [], time.perf_counter()
    reader.train()
    reader.encoder.eval()
    for step in range(1, total + 1):
        rows = [train[order[(step * args.batch_size + k) % len(order)]] for k in range(args.batch_size)]
        inputs = image_processor(images=[row["image"].convert("RGB") for row in rows], return_tensors="pt")
        ids = tokenizer([completion(row) for row in rows], add_special_tokens=False)["input_ids"]
        ids = [row_ids[: args.max_new_tokens - 1] + [tokenizer.eos_token_id] for row_ids in ids]
        longest = max(map(len, ids))
        labels = torch.tensor([row_ids + [-100] * (longest - len(row_ids)) for row_ids in ids])
        loss = reader(
            flattened_patches=inputs["pixel_values"], attention_mask=inputs["pixel_attention_mask"], labels=labels
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step in args.steps:
            figures = {"step": step, "examples": step * args.batch_size, "loss": round(loss.item(), 3)}
            for ablation in ("chart", "blank", "shuffled"):
                figures[ablation], sample = score(
                    reader, image_processor, tokenizer, test, ablation, args.max_new_tokens
                )
                if ablation == "chart":
                    figures["first_table"] = sample
            figures["seconds"] = round(time.perf_counter() - started)
            results.append(figures)
            print(json.dumps(figures, ensure_ascii=False), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"settings": vars(args), "results": results}, file, ensure_ascii=False, indent=2)
    return results


if __name__ == "__main__":
    main()
