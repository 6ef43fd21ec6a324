"""
Can a language model copy from its context? Reading a chart's values is copying: find where a value is, take what is
there. This trains a causal language model (or a ChartWiz checkpoint's language model, text only) on rows that hold
a table of a `chartwiz data build` folder twice, `table`, a blank line, `table`, with the loss on the second copy
only, and prints that loss as it goes: a model that copies drives it near zero, one that cannot stays at the loss of
writing a table with nothing to copy from (about 1 nat per token for the tiny models here).

    python benchmarks/copy_probe.py --model examples/tiny-lm --dataset outputs/tiny-chartwiz-work/charts --steps 3000
    python benchmarks/copy_probe.py --model examples/tiny-chartwiz --dataset outputs/tiny-chartwiz-work/charts \
        --steps 600
    # keep the copy-trained model, e.g. to compose a ChartWiz from it (`chartwiz compose --text DIR`):
    python benchmarks/copy_probe.py --model examples/tiny-lm ... --save outputs/tiny-lm-copies

docs/reading.md gives the figures of the tiny language model and of the shipped tiny ChartWiz.
"""

import argparse
import json
import math
import random
import time

import torch
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    get_cosine_schedule_with_warmup,
)

import chartwiz_hf  # noqa: F401  (registers ChartWiz with the Auto classes)


def load_language_model(path: str):
    """A causal language model, or a ChartWiz checkpoint (its encoder frozen: only text passes through it)."""
    if AutoConfig.from_pretrained(path).model_type == "chartwiz":
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        model.model.vision_tower.requires_grad_(False)
        return model
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def copy_batch(tokenizer, tables: list[str], separator: list[int], max_table_tokens: int) -> dict:
    """Right-padded rows `table`, separator, `table`, EOS, labelled on the second table and the EOS only."""
    rows, labels = [], []
    for table in tables:
        ids = tokenizer(table, add_special_tokens=False)["input_ids"][:max_table_tokens]
        copy = ids + [tokenizer.eos_token_id]
        rows.append(ids + separator + copy)
        labels.append([-100] * (len(ids) + len(separator)) + copy)
    longest = max(map(len, rows))
    return {
        "input_ids": torch.tensor([row + [tokenizer.pad_token_id] * (longest - len(row)) for row in rows]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows]),
        "labels": torch.tensor([label + [-100] * (longest - len(label)) for label in labels]),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal language model or a ChartWiz checkpoint folder")
    parser.add_argument("--dataset", required=True, help="a `chartwiz data build` folder: its pretrain tables")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-table-tokens", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="save the copy-trained model and its tokenizer here")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    draw = random.Random(args.seed)
    model = load_language_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    completions = load_dataset(args.dataset, "pretrain", split="train")["completion"]
    tables = [completion[0]["content"] for completion in completions]
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=0.0)
    # The recipes' schedule (lr_scheduler_type cosine, warmup_ratio 0.03), from the function their Trainer uses.
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * args.steps), args.steps)
    model.train()
    results, started, losses = [], time.perf_counter(), []
    for step in range(1, args.steps + 1):
        batch = copy_batch(
            tokenizer, [draw.choice(tables) for _ in range(args.batch_size)], separator, args.max_table_tokens
        )
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            figures = {
                "step": step,
                "copy_loss": round(sum(losses) / len(losses), 4),
                "seconds": round(time.perf_counter() - started),
            }
            losses = []
            results.append(figures)
            print(json.dumps(figures), flush=True)
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    return results


if __name__ == "__main__":
    main()
