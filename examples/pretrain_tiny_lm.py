"""
Pretrains the tiny language model shipped in `examples/tiny-lm`, whose shape and tokenizer `make quickstart` and the
tiny ChartWiz take with new weights, and which the tiny `pretrain` recipe composes as it is: a Llama with attention
heads of 32 and a byte-level BPE tokenizer, trained from scratch as a plain causal language
model on the texts of the ChartWiz datasets (questions, tables, descriptions, summaries and answers; no images) built
from synthetic charts that `chartwiz synth` draws with a seed no quickstart or test split uses. It is the offline
stand-in for the pretrained Korean language model of the real recipes: it speaks the data's language, it has never
seen a chart. `chartwiz compose --vision examples/tiny-deplot --text examples/tiny-lm --out DIR` joins the two.

```bash
python examples/pretrain_tiny_lm.py --out examples/tiny-lm   # the shipped checkpoint: minutes on 2 CPU cores
python examples/pretrain_tiny_lm.py --out /tmp/tiny-lm --charts 200 --max-steps 20   # a smoke run
```

Everything it makes on the way (charts, datasets, tokenizer, checkpoints) stays in `--work-dir`; run the same command
again after an interruption and it continues: the charts and datasets already made are kept and training resumes
from its last checkpoint. The same command on the same machine gives the same weights.
"""

import argparse
import json
import math
import os
import sys

import torch
from datasets import Dataset, load_dataset

# The script's own folder is on sys.path: the tiny DePlot's script beside it keeps the time of each phase the same way.
from pretrain_tiny_deplot import Timings
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from chartwiz.models.tiny import build_tiny_tokenizer, make_tiny_language_model
from chartwiz_hf.processing_chartwiz import readable_by_both_majors
from dataset_builder.build import build_dataset
from dataset_builder.synth import generate


MAX_TOKENS = 384  # longer than any question and answer of the synthetic charts
# Every text once: the tables of `pretrain` are those of `finetune` too.
TEXT_CONFIGS = ("finetune", "gpt")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to save the pretrained language model and its tokenizer")
    parser.add_argument("--work-dir", default="outputs/tiny-lm-work", help="charts, datasets and checkpoints")
    parser.add_argument("--charts", type=int, default=6000, help="synthetic charts whose texts it learns")
    parser.add_argument("--seed", type=int, default=1, help="synth seed; the quickstart and the tests draw seed 0")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--initializer-range",
        type=float,
        default=0.02,
        help="standard deviation of the initial weights (Llama's 0.02; docs/reading.md measures 0.1)",
    )
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--num-proc", type=int, default=2, help="processes drawing the charts and building the data")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the weights depend on it)")
    return parser.parse_args(argv)


def draw_and_build(
    work: str,
    charts: int,
    seed: int,
    num_proc: int,
    timings: Timings,
    test_fraction: float = 0.02,
    configs: tuple[str, ...] = TEXT_CONFIGS,
) -> str:
    """The `chartwiz data build` folder of `charts` synthetic charts drawn with `seed` (kept when already there)."""
    synth_dir, data_dir = os.path.join(work, "synth"), os.path.join(work, "charts")
    done_path = os.path.join(work, "built.json")
    wanted = {"charts": charts, "seed": seed}
    done = json.load(open(done_path, encoding="utf-8")) if os.path.isfile(done_path) else None
    if done != wanted:
        print(
            f"$ chartwiz synth {synth_dir} --n {charts} --seed {seed} --test-fraction {test_fraction} --overwrite\n"
            f"$ chartwiz data build --data-dir {synth_dir} --gpt {synth_dir}/gpt_qa.jsonl --out {data_dir} "
            f"--configs {' '.join(configs)}",
            flush=True,
        )
        with timings.measure("charts and datasets"):
            generate(synth_dir, charts, seed=seed, test_fraction=test_fraction, num_proc=num_proc, overwrite=True)
            gpt_sources = [os.path.join(synth_dir, "gpt_qa.jsonl")]
            build_dataset(synth_dir, data_dir, gpt_sources=gpt_sources, configs=configs, num_proc=num_proc)
        with open(done_path, "w", encoding="utf-8") as file:
            json.dump(wanted, file)
    return data_dir


def documents(data_dir: str, split: str) -> list[str]:
    """Each row's question and answer, one document per row: the tables, descriptions, summaries and QA of a split."""
    texts = []
    for config in TEXT_CONFIGS:
        for row in load_dataset(data_dir, config, split=split).select_columns(["prompt", "completion"]):
            turns = (*row["prompt"], *row["completion"])
            texts.append("\n".join(turn["content"] for turn in turns if turn["content"]))
    return texts


def main(argv=None):
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # One thread count: float sums, and so the trained weights, depend on how the work is split.
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    timings = Timings(os.path.join(work, "timings.json"))
    data_dir = draw_and_build(work, args.charts, args.seed, args.num_proc, timings)
    train_texts, test_texts = documents(data_dir, "train"), documents(data_dir, "test")

    tokenizer_dir = os.path.join(work, "tokenizer")
    if os.path.isdir(tokenizer_dir):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    else:
        tokenizer = build_tiny_tokenizer(args.vocab_size, corpus=train_texts)
        tokenizer.save_pretrained(tokenizer_dir)
    model, _ = make_tiny_language_model(
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        tokenizer=tokenizer,
        initializer_range=args.initializer_range,
    )

    def tokenized(texts):
        # Each document ends with the end-of-text token, so the model learns where an answer stops.
        ids = tokenizer([text + tokenizer.eos_token for text in texts], add_special_tokens=False)["input_ids"]
        return Dataset.from_dict({"input_ids": [row[:MAX_TOKENS] for row in ids]})

    train_set, test_set = tokenized(train_texts), tokenized(test_texts)
    print(f"{model.num_parameters():,} parameters, {len(train_set):,} training documents", flush=True)
    training_args = TrainingArguments(
        output_dir=os.path.join(work, "checkpoints"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=50,
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        logging_steps=50,
        save_strategy="steps",
        save_steps=200,
        save_total_limit=2,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        report_to="none",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=test_set,
        # Padding with `<pad>` (not the end-of-text token) keeps every document's last token in the loss.
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    with timings.measure("training"):
        trainer.train(resume_from_checkpoint=last)

    held_out = trainer.evaluate()["eval_loss"]
    print(json.dumps({"held_out_loss": held_out, "documents": len(test_set)}), flush=True)
    # Training turns the cache off in the config; the saved model generates with it.
    trainer.model.config.use_cache = True
    trainer.model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    make_tokenizer_readable_by_both_majors(args.out, tokenizer)
    card = model_card(
        args, model.num_parameters(), len(tokenizer), len(train_set), len(test_set), held_out, timings.seconds
    )
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as file:
        file.write(card)
    return held_out


def make_tokenizer_readable_by_both_majors(folder: str, tokenizer) -> None:
    """The saved `tokenizer_config.json` in the form transformers 4.57 reads too (5 writes class names 4.57 lacks)."""
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as file:
        settings = json.load(file)
    if readable_by_both_majors(settings, tokenizer):
        with open(path, "w", encoding="utf-8") as file:
            json.dump(settings, file, ensure_ascii=False, indent=2)


def model_card(
    args, parameters: int, vocabulary: int, train_documents: int, test_documents: int, loss: float, seconds: dict
) -> str:
    command = " ".join(["python", "examples/pretrain_tiny_lm.py", *args.argv])
    phases = ", ".join(f"{phase} {value / 60:.0f} min" for phase, value in seconds.items())
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
language: [ko]
tags: [llama, chartwiz]
---

# tiny-lm

The tiny pretrained language model that ChartWiz's tiny `pretrain` recipe composes (the quickstart and the tiny
ChartWiz take its shape and tokenizer with new weights): `LlamaForCausalLM` ({parameters:,} parameters, {args.layers}
layers of width {args.hidden_size}, attention heads of 32, initial weights of standard deviation
{args.initializer_range:g}) with a {vocabulary}-token byte-level BPE tokenizer, trained from scratch as a causal
language model on {train_documents:,} texts (each a question and its answer: tables, descriptions, summaries, question
answering) of the ChartWiz datasets built from {args.charts:,} synthetic charts that `chartwiz synth --seed
{args.seed}` draws; no image. {args.epochs:g} epoch(s), batch {args.batch_size}, AdamW at {args.learning_rate:g} with
a cosine schedule, by `examples/pretrain_tiny_lm.py` on a 2-core CPU ({phases}):

```bash
{command}   # again: the same weights, on the same machine
```

Held-out loss {loss:.3f} (perplexity {math.exp(loss):.2f}) on the {test_documents:,} texts of that draw's test charts.
It is the offline stand-in for the pretrained Korean language model of the real recipes:
`chartwiz compose --vision examples/tiny-deplot --text examples/tiny-lm --out DIR` joins it to the tiny DePlot's
encoder. The quickstart's charts (seed 0) and the tests' were never in its training set.
"""


if __name__ == "__main__":
    main()
