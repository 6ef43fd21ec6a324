"""
Stage-2 training on CPU through the recipe script (`recipes/sft_chartwiz.py`, TRL's `SFTTrainer`):

- throughput of a training step (data loading and image processing included) in samples/s and tokens/s, eager vs
  sdpa attention, with and without gradient checkpointing, on the `small` config;
- padding efficiency of collated stage-2 batches of the synthetic finetune split (real tokens / padded tokens, image
  tokens included), in random order vs the recipe's length grouping.

    python benchmarks/bench_training.py --charts 200 --work-dir /tmp/chartwiz-train-bench
"""

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from models import make_model
from transformers import AutoProcessor, TrainerCallback

from chartwiz import training
from chartwiz.models.tiny import make_tiny_chartwiz
from dataset_builder.build import build_dataset
from dataset_builder.synth import generate


REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def load_recipe_script():
    spec = importlib.util.spec_from_file_location("sft_chartwiz", RECIPES / "sft_chartwiz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sft = load_recipe_script()


def synthetic_dataset(work_dir: str, charts: int) -> str:
    """The finetune config of `charts` synthetic charts (built once per work dir and size)."""
    raw, built = os.path.join(work_dir, f"synth-{charts}"), os.path.join(work_dir, f"charts-{charts}")
    if not os.path.isfile(os.path.join(built, "README.md")):
        generate(raw, charts, seed=0, num_proc=2, progress=False)
        build_dataset(raw, built, configs=["finetune"], num_proc=2)
    return built


def padding_efficiency(lengths: np.ndarray, order: list[int], batch_size: int) -> float:
    """Real tokens / padded tokens over the batches of one epoch in `order` (each batch padded to its longest)."""
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = lengths[order[start : start + batch_size]]
        real += int(batch.sum())
        padded += int(batch.max()) * len(batch)
    return real / padded


def measure_padding(data_dir: str, model_dir: str, batch_size: int, epochs: int = 5) -> dict:
    from datasets import load_dataset

    processor = AutoProcessor.from_pretrained(model_dir)
    train = load_dataset(data_dir, "finetune", split="train")
    # The lengths the collator produces (tests/test_recipes.py checks them against collated batches)
    train, _ = training.add_sequence_lengths(train, processor)
    lengths = np.asarray(train["length"])
    generator = torch.Generator().manual_seed(0)
    random_order = [torch.randperm(len(lengths), generator=generator).tolist() for _ in range(epochs)]
    sampler = training.SeededLengthGroupedSampler(batch_size, lengths.tolist(), seed=42)
    grouped_order = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        grouped_order.append(list(sampler))
    return {
        "rows": len(lengths),
        "image_tokens": processor.image_seq_length,
        "batch_size": batch_size,
        "mean_length": float(lengths.mean()),
        "random_order": float(np.mean([padding_efficiency(lengths, order, batch_size) for order in random_order])),
        "length_grouped": float(np.mean([padding_efficiency(lengths, order, batch_size) for order in grouped_order])),
    }


class StepTimer(TrainerCallback):
    """Wall time and tokens (TRL's count of attention-mask tokens) between step ends, after `warmup` steps."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.trainer = None
        self.start = self.start_tokens = None
        self.seconds = self.tokens = self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        now, tokens = time.perf_counter(), self.trainer._total_train_tokens
        if state.global_step > self.warmup:
            self.seconds += now - self.start
            self.tokens += tokens - self.start_tokens
            self.steps += 1
        self.start, self.start_tokens = now, tokens


def measure_step(model_dir, data_dir, work_dir, attention, checkpointing, batch_size, steps, warmup) -> dict:
    output_dir = os.path.join(work_dir, f"run-{attention}-{checkpointing}")
    arguments = sft.make_parser().parse_args_and_config(
        [
            "--config",
            str(RECIPES / "chartwiz-tiny/finetune/config_full.yaml"),
            "--model_name_or_path",
            model_dir,
            "--dataset_name",
            data_dir,
            "--dataset_config",
            "finetune",
            "--output_dir",
            output_dir,
            "--overwrite_output_dir",
            "true",
            "--attn_implementation",
            attention,
            "--gradient_checkpointing",
            str(checkpointing).lower(),
            "--per_device_train_batch_size",
            str(batch_size),
            "--max_steps",
            str(warmup + steps),
            "--save_strategy",
            "no",
            "--do_eval",
            "false",
            "--logging_steps",
            "1000",
            "--disable_tqdm",
            "true",
        ]
    )
    timer = StepTimer(warmup)
    trainer, _ = sft.build_trainer(*arguments, callbacks=[timer])
    timer.trainer = trainer
    trainer.train()
    return {"samples_per_s": timer.steps * batch_size / timer.seconds, "tokens_per_s": timer.tokens / timer.seconds}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--charts", type=int, default=200, help="synthetic charts (the finetune split has 3 per chart)"
    )
    parser.add_argument("--work-dir", default="/tmp/chartwiz-train-bench")
    parser.add_argument("--model", default="small", choices=["tiny", "small"])
    parser.add_argument("--max-patches", type=int, default=None, help="image tokens per chart (small: 512)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run, after --warmup")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step starts the clock")
    os.makedirs(args.work_dir, exist_ok=True)
    data_dir = synthetic_dataset(args.work_dir, args.charts)

    # Padding with the tiny recipe's settings (its model and batch size), and with 512 image tokens per chart
    results = {"padding": []}
    for max_patches, batch_size in ((64, 8), (512, 16)):
        model_dir = os.path.join(args.work_dir, f"tiny-{max_patches}")
        if not os.path.isdir(model_dir):
            make_tiny_chartwiz(model_dir, max_patches=max_patches)
        results["padding"].append(measure_padding(data_dir, model_dir, batch_size))

    model_dir = os.path.join(args.work_dir, f"{args.model}-{args.max_patches}")
    if not os.path.isdir(model_dir):
        torch.manual_seed(0)
        make_model(args.model, output_dir=model_dir, max_patches=args.max_patches)
    variants = [(attention, checkpointing) for attention in ("eager", "sdpa") for checkpointing in (False, True)]
    best = dict.fromkeys(variants)
    # The variants take turns, best of each, so that machine noise hits them alike.
    for _ in range(args.repeats):
        for attention, checkpointing in variants:
            run = measure_step(
                model_dir, data_dir, args.work_dir, attention, checkpointing, args.batch_size, args.steps, args.warmup
            )
            current = best[(attention, checkpointing)]
            if current is None or run["samples_per_s"] > current["samples_per_s"]:
                best[(attention, checkpointing)] = run
    results["steps"] = [
        {"attention": attention, "gradient_checkpointing": checkpointing, **best[(attention, checkpointing)]}
        for attention, checkpointing in variants
    ]
    results["model"] = {"name": args.model, "image_tokens": args.max_patches or "config", "batch": args.batch_size}
    results["torch_threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
