"""
Pretrains the tiny DePlot that `make quickstart` and the tests use as their chart encoder (`examples/tiny-deplot`):
a Pix2Struct model (encoder and a small decoder, `Pix2StructForConditionalGeneration`) trained from scratch on
DePlot's objective, chart image -> data table text, over synthetic charts that `chartwiz synth` draws with seeds no
quickstart or test split uses. It is the offline stand-in for `google/deplot`: `chartwiz compose --vision
examples/tiny-deplot --text LM --out DIR` takes it as it takes DePlot.

```bash
python examples/pretrain_tiny_deplot.py --out examples/tiny-deplot   # the shipped checkpoint: hours on 2 CPU cores
python examples/pretrain_tiny_deplot.py --out /tmp/tiny-deplot --charts 400 --epochs 1   # a smoke run, minutes
```

Everything it makes on the way (charts, tokenizer, patches, checkpoints) stays in `--work-dir`; run the same command
again after an interruption and it continues: the charts and patches already made are kept and training resumes
from its last checkpoint. The same command on the same machine gives the same weights.
"""

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from transformers import (
    Pix2StructConfig,
    Pix2StructForConditionalGeneration,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from chartwiz.evaluation.metrics import rms
from chartwiz.models.tiny import build_tiny_tokenizer
from chartwiz_hf.image_processing_chartwiz import ChartWizImageProcessor
from dataset_builder.aihub import image_dir
from dataset_builder.synth import FOLDER_OF_TYPE, MANIFEST_NAME, generate


def pix2struct_image_processor(**kwargs):
    # transformers 5 names the torchvision-backed class Pix2StructImageProcessor and the PIL one ...Pil; 4.x has one.
    import transformers

    return (getattr(transformers, "Pix2StructImageProcessorPil", None) or transformers.Pix2StructImageProcessor)(
        **kwargs
    )


CHUNK = 500  # charts per patch file: an interrupted run loses at most one file's work
MAX_TABLE_TOKENS = 256


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to save the pretrained checkpoint")
    parser.add_argument("--work-dir", default="outputs/tiny-deplot-work", help="charts, patches and checkpoints")
    parser.add_argument("--charts", type=int, default=24000, help="synthetic charts drawn (1 in 100 held out)")
    parser.add_argument("--seed", type=int, default=1, help="synth seed; the quickstart and the tests draw seed 0")
    parser.add_argument("--max-patches", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=512, help="the decoder's byte-level BPE vocabulary")
    parser.add_argument("--hidden-size", type=int, default=128, help="width of the encoder and the decoder")
    parser.add_argument("--encoder-layers", type=int, default=4)
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--num-proc", type=int, default=2, help="processes drawing the charts")
    parser.add_argument("--save-steps", type=int, default=250)
    parser.add_argument("--eval-steps", type=int, default=1000, help="greedy tables of the held-out charts")
    parser.add_argument("--eval-charts", type=int, default=32)
    parser.add_argument(
        "--save-dtype", default="float16", choices=("float16", "float32"), help="dtype of the saved weights"
    )
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Data: synthetic charts, their tables, their patches


def draw_charts(synth_dir: str, charts: int, seed: int, num_proc: int, timings) -> list[dict]:
    """The manifest of `charts` synthetic charts drawn with `seed` into `synth_dir` (kept when already there)."""
    manifest_path = os.path.join(synth_dir, MANIFEST_NAME)
    done_path = os.path.join(synth_dir, "drawn.json")
    wanted = {"charts": charts, "seed": seed}
    done = json.load(open(done_path, encoding="utf-8")) if os.path.isfile(done_path) else None
    if done != wanted:
        with timings.measure("drawing the charts"):
            generate(synth_dir, charts, seed=seed, test_fraction=0.01, num_proc=num_proc, overwrite=True)
        with open(done_path, "w", encoding="utf-8") as file:
            json.dump(wanted, file)
    with open(manifest_path, encoding="utf-8") as file:
        manifest = [json.loads(line) for line in file]
    for entry in manifest:
        folder = FOLDER_OF_TYPE[entry["chart_type"]]
        entry["image"] = os.path.join(image_dir(synth_dir, entry["split"], folder), f"{entry['stem']}.jpg")
    return manifest


def patch_files(manifest: list[dict], patches_dir: str, image_processor, timings) -> list[str]:
    """
    The flattened patches of every chart, in manifest order, as float16 `.npy` files of `CHUNK` charts
    (`[charts, max_patches, 2 + 16 * 16 * 3]`); files made by an earlier run are kept.
    """
    os.makedirs(patches_dir, exist_ok=True)
    paths = []
    for start in range(0, len(manifest), CHUNK):
        path = os.path.join(patches_dir, f"{start // CHUNK:05d}.npy")
        paths.append(path)
        if os.path.isfile(path):
            continue
        with timings.measure("patches"):
            images = [Image.open(entry["image"]) for entry in manifest[start : start + CHUNK]]
            patches = image_processor(images=images, return_tensors="np")["pixel_values"].astype(np.float16)
            np.save(f"{path}.tmp.npy", patches)
            os.replace(f"{path}.tmp.npy", path)
        print(f"patches of charts {start}-{start + len(images) - 1} in {path}", flush=True)
    return paths


class ChartTables(torch.utils.data.Dataset):
    """(patches, table token ids) of some charts; the patches are memory-mapped from their files."""

    def __init__(self, files: list[str], indices: list[int], labels: list[list[int]]):
        self.files = [np.load(path, mmap_mode="r") for path in files]
        self.indices, self.labels = indices, labels

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, item):
        index = self.indices[item]
        patches = torch.from_numpy(np.array(self.files[index // CHUNK][index % CHUNK], dtype=np.float32))
        return {
            "flattened_patches": patches,
            "attention_mask": (patches.sum(-1) != 0).float(),
            "labels": self.labels[item],
        }


def collate(rows: list[dict]) -> dict:
    longest = max(len(row["labels"]) for row in rows)
    # -100: padding positions carry no loss (Pix2Struct turns them into the pad id for the decoder's inputs).
    labels = torch.tensor([row["labels"] + [-100] * (longest - len(row["labels"])) for row in rows])
    return {
        "flattened_patches": torch.stack([row["flattened_patches"] for row in rows]),
        "attention_mask": torch.stack([row["attention_mask"] for row in rows]),
        "labels": labels,
    }


# ----------------------------------------------------------------------------------------------------------------
# Model


def tiny_deplot_config(tokenizer, args) -> Pix2StructConfig:
    """A Pix2Struct config of DePlot's kind (`is_vqa`: a header is drawn above the chart), at a tiny size."""
    hidden, heads = args.hidden_size, args.hidden_size // 32
    vision = {
        "hidden_size": hidden,
        "patch_embed_hidden_size": 16 * 16 * 3,
        "d_ff": 2 * hidden,
        "d_kv": 32,
        "num_hidden_layers": args.encoder_layers,
        "num_attention_heads": heads,
        # Row and column ids run up to the number of patches (a chart one patch high).
        "seq_len": args.max_patches + 1,
        "dropout_rate": 0.0,
    }
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "d_ff": 2 * hidden,
        "d_kv": 32,
        "num_layers": args.decoder_layers,
        "num_heads": heads,
        "dropout_rate": 0.0,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        # T5's convention, which Pix2Struct keeps: decoding starts from the pad token.
        "decoder_start_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    return Pix2StructConfig(text_config=text, vision_config=vision, is_vqa=True, tie_word_embeddings=False)


class TableTrainer(Trainer):
    """`Trainer` whose evaluation writes the held-out charts' tables greedily and scores them with DePlot's RMS."""

    def __init__(self, *args, eval_rows=None, tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_rows, self.table_tokenizer = eval_rows, tokenizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = {
            f"{metric_key_prefix}_{k}": v
            for k, v in score_tables(self.model, *self.eval_rows, self.table_tokenizer).items()
        }
        self.log(metrics)
        return metrics


@torch.no_grad()
def read_tables(model, dataset: ChartTables, tokenizer, batch_size: int = 16) -> list[str]:
    """The model's greedy tables for every chart of `dataset`."""
    model.eval()
    tables = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[item] for item in range(start, min(start + batch_size, len(dataset)))])
        output = model.generate(
            flattened_patches=batch["flattened_patches"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            max_new_tokens=MAX_TABLE_TOKENS,
            do_sample=False,
        )
        tables += tokenizer.batch_decode(output, skip_special_tokens=True)
    model.train()
    return tables


def score_tables(model, dataset: ChartTables, references: list[str], tokenizer) -> dict:
    tables = read_tables(model, dataset, tokenizer)
    return {key: value for key, value in rms(references, tables).items() if key in ("rms_f1", "rms_units_f1")}


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    set_seed(args.seed)
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    timings = Timings(os.path.join(work, "timings.json"))
    manifest = draw_charts(os.path.join(work, "synth"), args.charts, args.seed, args.num_proc, timings)
    train = [index for index, entry in enumerate(manifest) if entry["split"] == "train"]
    all_test = [index for index, entry in enumerate(manifest) if entry["split"] == "test"]
    test = all_test[: args.eval_charts]

    tokenizer_dir = os.path.join(work, "tokenizer")
    if os.path.isdir(tokenizer_dir):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    else:
        tokenizer = build_tiny_tokenizer(args.vocab_size, corpus=[manifest[index]["table"] for index in train])
        tokenizer.model_max_length = MAX_TABLE_TOKENS
        tokenizer.save_pretrained(tokenizer_dir)

    def labels(indices):
        ids = tokenizer([manifest[index]["table"] for index in indices], add_special_tokens=False)["input_ids"]
        return [row[: MAX_TABLE_TOKENS - 1] + [tokenizer.eos_token_id] for row in ids]

    # The very processor ChartWiz feeds its encoder with: DePlot's header drawn offline in the bundled font.
    image_processor = ChartWizImageProcessor(max_patches=args.max_patches)
    files = patch_files(manifest, os.path.join(work, f"patches-{args.max_patches}"), image_processor, timings)
    train_set = ChartTables(files, train, labels(train))
    test_set = ChartTables(files, test, labels(test))
    references = [manifest[index]["table"] for index in test]

    model = Pix2StructForConditionalGeneration(tiny_deplot_config(tokenizer, args))
    print(f"{model.num_parameters():,} parameters, {len(train_set)} training charts", flush=True)
    training_args = TrainingArguments(
        output_dir=os.path.join(work, "checkpoints"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_ratio=0.02,
        weight_decay=0.01,
        num_train_epochs=args.epochs,
        logging_steps=20,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
    )
    trainer = TableTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=test_set,
        data_collator=collate,
        eval_rows=(test_set, references),
        tokenizer=tokenizer,
    )
    last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    with timings.measure("training"):
        trainer.train(resume_from_checkpoint=last)

    # Trained in float32, saved in half precision (float16 keeps 11 significant bits of each weight) so that the
    # shipped file stays under 5 MB; the held-out scores are those of the saved weights.
    dtype = getattr(torch, args.save_dtype)
    model = trainer.model.to(dtype).to(torch.float32)
    test_set = ChartTables(files, all_test, labels(all_test))
    scores = score_tables(model, test_set, [manifest[index]["table"] for index in all_test], tokenizer)
    print(json.dumps({"held_out": scores, "charts": len(all_test)}), flush=True)
    model.to(dtype).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    pix2struct_image_processor(is_vqa=True, max_patches=args.max_patches).save_pretrained(args.out)
    card = model_card(args, model.num_parameters(), len(train), len(all_test), scores, timings.seconds)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as file:
        file.write(card)
    return scores


class Timings:
    """Wall time of each phase, summed over the runs that did its work (an interrupted run is continued)."""

    def __init__(self, path: str):
        self.path = path
        self.seconds = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else {}

    @contextmanager
    def measure(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:  # an interrupted phase did work too: the run that continues it adds its own time
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            with open(self.path, "w", encoding="utf-8") as file:
                json.dump(self.seconds, file, indent=2)


def model_card(args, parameters: int, train_charts: int, test_charts: int, scores: dict, seconds: dict) -> str:
    command = " ".join(["python", "examples/pretrain_tiny_deplot.py", *args.argv])
    hours = sum(seconds.values()) / 3600
    phases = ", ".join(f"{phase} {value / 3600:.1f} h" for phase, value in seconds.items())
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
language: [ko]
tags: [pix2struct, deplot, chart-to-table, chartwiz]
---

# tiny-deplot

A tiny DePlot for ChartWiz's quickstart and tests: `Pix2StructForConditionalGeneration` ({parameters:,}
parameters, {args.encoder_layers}-layer encoder and {args.decoder_layers}-layer decoder of width {args.hidden_size},
{args.save_dtype} weights), DePlot's kind of Pix2Struct (`is_vqa`: the header `Generate underlying data table of
the figure below:` drawn above the chart, {args.max_patches} patches of 16 x 16), trained from scratch on DePlot's
objective, chart image -> data table text, over {train_charts:,} synthetic charts that `chartwiz synth --seed
{args.seed}` draws (640 x 480, Korean labels, every value printed on the chart), {args.epochs:g} epoch(s), batch
{args.batch_size}, AdamW at {args.learning_rate:g} with a cosine schedule, by `examples/pretrain_tiny_deplot.py` in
{hours:.1f} hours on a shared 2-core CPU ({phases}):

```bash
{command}   # again: the same weights, on the same machine
```

On {test_charts} held-out charts of that draw its greedy tables score RMS F1 {scores["rms_f1"]:.1f} (DePlot's metric,
`rms_units_f1` {scores["rms_units_f1"]:.1f}). It reads charts like ChartWiz's synthetic ones and nothing else: it is
the offline stand-in for `google/deplot`, whose encoder `chartwiz compose --vision examples/tiny-deplot --text LM
--out DIR` takes the same way. The quickstart's charts (seed 0) and the tests' were never in its training set.

```python
from transformers import AutoTokenizer, Pix2StructForConditionalGeneration

from chartwiz_hf.image_processing_chartwiz import ChartWizImageProcessor

model = Pix2StructForConditionalGeneration.from_pretrained("examples/tiny-deplot", dtype="float32")
tokenizer = AutoTokenizer.from_pretrained("examples/tiny-deplot")
# ChartWiz's image processor draws the header offline, in the bundled font it was trained with.
image_processor = ChartWizImageProcessor(max_patches={args.max_patches})
inputs = image_processor(images=chart, return_tensors="pt")
output = model.generate(
    flattened_patches=inputs["pixel_values"], attention_mask=inputs["pixel_attention_mask"], max_new_tokens=256
)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```
"""


if __name__ == "__main__":
    main()
