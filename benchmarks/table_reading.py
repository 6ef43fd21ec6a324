"""
Reads held-out charts into tables with a ChartWiz checkpoint, asked as its table rows were trained, beside blank
charts and another row's chart: RMS F1, its cells alone and the titles read.

`chartwiz evaluate --config pretrain` asks every table row the table instruction, as a stage-2 model was taught, so
that `pretrain` and `finetune` table scores compare. A checkpoint trained on `pretrain` rows alone (the recipe with
`--dataset_config pretrain`: the chart, no words, then the table) has never seen that instruction, and a language
model that learnt nothing else does not even begin its table. `--ask chart-alone` asks such a checkpoint as the
recipe's collator trained it; `--ask instruction` asks as `chartwiz evaluate` does, for the same checkpoint side by
side (docs/reading.md).

    python benchmarks/table_reading.py --model outputs/tables-only --dataset outputs/charts
    python benchmarks/table_reading.py --model outputs/tables-only --dataset outputs/charts --ask instruction

Asked as trained, the prompt is the row's own, made multimodal by TRL's `prepare_multimodal_messages` as the
recipes' collator makes it; asked the instruction, it is `chartwiz.inference`'s prompt, as `ask` and `evaluate` build
it. Both go through the checkpoint's chat template, and the images through its processor.
"""

import argparse
import json

import torch
from datasets import load_dataset
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.data_utils import prepare_multimodal_messages

import chartwiz_hf  # noqa: F401  (registers ChartWiz with the Auto classes)
from chartwiz.evaluation.table_metrics import rms
from chartwiz.inference.prompts import build_prompt
from chartwiz.names import INSTRUCTIONS


def prompt_for(processor, row_prompt: list[dict], ask: str) -> str:
    if ask == "instruction":
        return build_prompt(processor, INSTRUCTIONS["table"][0])
    messages = prepare_multimodal_messages(row_prompt, images=[None])
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def read_tables(model, processor, images, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    tables = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        text = prompts[start : start + batch_size]
        inputs = processor(images=batch, text=text, return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        tables += processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return tables


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a ChartWiz checkpoint folder")
    parser.add_argument("--dataset", required=True, help="a `chartwiz data build` folder: its pretrain test split")
    parser.add_argument("--ask", choices=("chart-alone", "instruction"), default="chart-alone")
    parser.add_argument("--charts", type=int, default=100, help="held-out charts read")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"  # generation appends on the right, so any padding goes left
    rows = load_dataset(args.dataset, "pretrain", split="test")
    rows = rows.select(range(min(args.charts, len(rows))))
    references = [row["completion"][0]["content"] for row in rows]
    prompts = [prompt_for(processor, row["prompt"], args.ask) for row in rows]

    charts = [row["image"].convert("RGB") for row in rows]
    shown = {
        "chart": charts,
        "blank": [Image.new("RGB", chart.size, "white") for chart in charts],
        "shuffled": charts[1:] + charts[:1],
    }
    figures = {"model": args.model, "ask": args.ask, "charts": len(rows)}
    for ablation, images in shown.items():
        tables = read_tables(model, processor, images, prompts, args.max_new_tokens, args.batch_size)
        scores = rms(references, tables)
        figures[ablation] = {key: round(scores[key], 1) for key in ("rms_f1", "rms_cells_f1", "title_match")}
        if ablation == "chart":
            figures["first_table"] = tables[0]
    print(json.dumps(figures, ensure_ascii=False), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(figures, file, ensure_ascii=False, indent=2)
    return figures


if __name__ == "__main__":
    main()
