"""
Can a dedicated reader turn a ChartWiz checkpoint's frozen encoder output into tables, and how fast? A fresh
Pix2Struct text decoder (cross-attention to the encoder's patches, the reader DePlot itself uses) is trained on the
`pretrain` tables of a `chartwiz data build` folder, with the encoder frozen, batches drawn at random as the recipes
draw them, and its greedy tables are scored by RMS F1 on held-out charts beside blank charts and another row's chart.

It answers where a table's content is lost: if this reader learns the tables in a few hundred steps while ChartWiz's
language model, trained on the same rows by `recipes/sft_chartwiz.py`, does not, the encoder's output holds what the
language model fails to take (docs/reading.md gives both).

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
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
    get_cosine_schedule_with_warmup,
)

import chartwiz_hf  # noqa: F401  (registers ChartWiz with the Auto classes)
from chartwiz.evaluation.table_metrics import rms


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


def completion(row) -> str:
    return row["completion"][0]["content"]


def score(reader, image_processor, tokenizer, rows, ablation: str, max_new_tokens: int, batch_size: int = 20):
    """RMS F1 of the reader's greedy tables for `rows`, shown their charts, blank charts or the next row's chart."""
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
    return rms([completion(row) for row in rows], tables)["rms_f1"], tables[0]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a ChartWiz checkpoint folder: its encoder is read")
    parser.add_argument("--train", required=True, help="a `chartwiz data build` folder: its pretrain train split")
    parser.add_argument("--test", required=True, help="a `chartwiz data build` folder: its pretrain test split")
    parser.add_argument("--tokenizer", default=None, help="the tokenizer the reader writes (default: the model's)")
    parser.add_argument("--steps", type=int, nargs="+", default=[400], help="score after each of these steps")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (the tiny DePlot's: 2)")
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
                figures[ablation] = round(figures[ablation], 1)
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
