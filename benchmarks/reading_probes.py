"""
Does a ChartWiz checkpoint read the chart, and if not, where is the chart's signal lost? Measured on the table rows of
a `chartwiz data build` folder, through the processor as every entry point builds its inputs:

- linear probes (closed-form ridge, fitted on train-split charts, scored on test-split charts) for the chart type and
  for the table's first value, on the encoder's output and the projector's output (each averaged over the chart's
  real patches) and on the language model's last hidden state at the first answer position;
- the reference table's mean negative log-likelihood per token, teacher-forced, with the chart, a blank white image
  of its size and another test chart, and the KL divergence of the answer tokens' distributions with and without it;
- where the language model looks from the first answer position: the share of its attention on the image tokens,
  per layer, and how evenly that share is spread over them (1.0: uniform);
- how alike the projected image tokens of two charts are at the same patch slot (mean cosine): training that turns
  the image tokens into one fixed prompt shows here.

    python benchmarks/reading_probes.py --model outputs/chartwiz-tiny-finetune --dataset outputs/charts
    python benchmarks/reading_probes.py --model examples/tiny-chartwiz --dataset outputs/charts --json probes.json

docs/reading.md gives the figures of the quickstart's models and of the shipped tiny ChartWiz.
"""

import argparse
import json
import math
import re

import numpy as np
import torch
from datasets import load_dataset
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import chartwiz_hf  # noqa: F401  (registers ChartWiz with the Auto classes)
from chartwiz.inference import chat_messages


TABLE_QUESTION = "이 차트를 테이블 정보로 변경해줘."
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def table_rows(dataset: str, split: str, count: int, seed: int = 0):
    """`count` table rows of a split, drawn at random (a split is stored in chart-type order)."""
    rows = load_dataset(dataset, "finetune", split=split).filter(lambda row: row["task"] == "table")
    return rows.shuffle(seed=seed).select(range(min(count, len(rows))))


def first_value(table: str) -> float:
    """The first number in the table's data rows (after the title and the header), NaN if there is none."""
    for line in table.split("\n")[2:]:
        for cell in line.split("|")[1:]:
            match = _NUMBER.search(cell.replace(",", ""))
            if match:
                return float(match.group())
    return float("nan")


def training_inputs(processor, rows, images: list) -> tuple[dict, list[int]]:
    """
    The table question and reference answer of each row as training builds them (TRL's collator: the prompt through
    the processor, the completion, what the chat template writes after the prompt, tokenized apart and appended),
    right-padded; and each prompt's length.
    """
    tokenizer = processor.tokenizer
    prompts, completions = [], []
    for row in rows:
        messages = chat_messages(row["prompt"][0]["content"] or TABLE_QUESTION)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        answer = {"role": "assistant", "content": [{"type": "text", "text": row["completion"][0]["content"]}]}
        prompts.append(prompt)
        completions.append(processor.apply_chat_template([*messages, answer])[len(prompt) :])
    prompt_inputs = processor(images=images, text=prompts)
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    sequences = [list(ids) + answer for ids, answer in zip(prompt_inputs["input_ids"], completion_ids)]
    padded = tokenizer.pad({"input_ids": sequences}, padding=True, padding_side="right", return_tensors="pt")
    pixels = processor.image_processor(images=images, return_tensors="pt")
    return {**padded, **pixels}, [len(ids) for ids in prompt_inputs["input_ids"]]


def shown_images(rows, ablation: str) -> list[Image.Image]:
    charts = [row["image"].convert("RGB") for row in rows]
    if ablation == "blank":
        return [Image.new("RGB", chart.size, "white") for chart in charts]
    if ablation == "shuffled":
        # Each row is shown the chart of the row half the set away: never its own, and a chart of another type in
        # a set drawn evenly over the types.
        return [charts[(index + len(charts) // 2) % len(charts)] for index in range(len(charts))]
    return charts


@torch.no_grad()
def measure(model, processor, rows, ablation: str = "chart", batch_size: int = 16) -> dict:
    """Features for the probes, and the answer's per-token log-probabilities, of `rows` shown `ablation` images."""
    pooled_encoder, pooled_projector, answer_states, log_probs, attention = [], [], [], [], []
    image_token_id = model.config.image_token_id
    for start in range(0, len(rows), batch_size):
        batch = rows.select(range(start, min(start + batch_size, len(rows))))
        inputs, prompt_lengths = training_inputs(processor, batch, shown_images(batch, ablation))
        # [batch, patches, vision_hidden] and [batch, patches, text_hidden]
        encoded = model.model.vision_tower(
            flattened_patches=inputs["pixel_values"], attention_mask=inputs["pixel_attention_mask"]
        ).last_hidden_state
        projected = model.model.multi_modal_projector(encoded)
        real = inputs["pixel_attention_mask"].unsqueeze(-1)
        pooled_encoder.append(((encoded * real).sum(1) / real.sum(1)).numpy())
        pooled_projector.append(((projected * real).sum(1) / real.sum(1)).numpy())
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
        rows_index = torch.arange(len(batch))
        # the position whose output is the answer's first token
        last_prompt = torch.tensor(prompt_lengths) - 1
        answer_states.append(outputs.hidden_states[-1][rows_index, last_prompt].numpy())
        image_positions = inputs["input_ids"] == image_token_id
        per_layer = []
        for layer_attention in outputs.attentions:
            # [batch, heads, keys] from the first answer position
            weights = layer_attention[rows_index, :, last_prompt]
            on_image = (weights * image_positions[:, None, :]).sum(-1)
            spread = (weights * image_positions[:, None, :]) / on_image.clamp(min=1e-12).unsqueeze(-1)
            entropy = -(spread * spread.clamp(min=1e-12).log()).sum(-1) / math.log(int(image_positions[0].sum()))
            per_layer.append((float(on_image.mean()), float(entropy.mean())))
        attention.append(per_layer)
        step_log_probs = outputs.logits[:, :-1].float().log_softmax(-1)
        for row, length in enumerate(prompt_lengths):
            end = int(inputs["attention_mask"][row].sum())
            targets = inputs["input_ids"][row, length:end]
            # [answer_tokens, vocab]: the distributions that predict the answer's tokens
            log_probs.append((step_log_probs[row, length - 1 : end - 1], targets))
    attention = np.asarray(attention).mean(0)
    return {
        "encoder": np.concatenate(pooled_encoder),
        "projector": np.concatenate(pooled_projector),
        "answer_state": np.concatenate(answer_states),
        "log_probs": log_probs,
        "attention": attention,
    }


def _ridge(features: np.ndarray, targets: np.ndarray, strength: float):
    mean, scale = features.mean(0), features.std(0) + 1e-6

    def design(x):
        return np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], 1)

    x = design(features)
    weights = np.linalg.solve(x.T @ x + strength * np.eye(x.shape[1]), x.T @ targets)
    return lambda new: design(new) @ weights


def probe_chart_type(train_x, train_types, test_x, test_types, strength: float = 10.0) -> float:
    """Accuracy (percent) of a one-vs-rest ridge classifier of the chart type."""
    classes = sorted(set(train_types))
    one_hot = np.array([[kind == name for name in classes] for kind in train_types], dtype=float)
    scores = _ridge(train_x, one_hot, strength)(test_x)
    return 100.0 * float(np.mean([classes[i] == kind for i, kind in zip(scores.argmax(1), test_types)]))


def probe_value(train_x, train_values, test_x, test_values, strength: float = 10.0) -> float:
    """R² on the test charts of a ridge regression of the table's first value."""
    keep_train, keep_test = ~np.isnan(train_values), ~np.isnan(test_values)
    predicted = _ridge(train_x[keep_train], train_values[keep_train], strength)(test_x[keep_test])
    truth = test_values[keep_test]
    return float(1 - ((predicted - truth) ** 2).sum() / ((truth - train_values[keep_train].mean()) ** 2).sum())


@torch.no_grad()
def token_alikeness(model, processor, rows) -> float:
    """Mean cosine between two charts' projected image tokens at the same real patch slot (1.0: all charts alike)."""
    inputs = processor.image_processor(images=shown_images(rows, "chart"), return_tensors="pt")
    encoded = model.model.vision_tower(
        flattened_patches=inputs["pixel_values"], attention_mask=inputs["pixel_attention_mask"]
    ).last_hidden_state
    # [charts, patches, text_hidden], unit length
    tokens = torch.nn.functional.normalize(model.model.multi_modal_projector(encoded), dim=-1)
    real = inputs["pixel_attention_mask"].bool()
    # [patches, charts, charts]
    cosines = torch.einsum("iph,jph->pij", tokens, tokens)
    both_real = real.T[:, :, None] & real.T[:, None, :]
    off_diagonal = both_real & ~torch.eye(len(rows), dtype=torch.bool)[None]
    return float(cosines[off_diagonal].mean())


def answer_scores(chart: dict, other: dict) -> tuple[float, float]:
    """(mean NLL per answer token with `other`'s images, mean KL(chart || other) per answer token)."""
    nll, kl, tokens = 0.0, 0.0, 0
    for (with_chart, targets), (without, _) in zip(chart["log_probs"], other["log_probs"]):
        nll -= float(without.gather(-1, targets.unsqueeze(-1)).sum())
        kl += float((with_chart.exp() * (with_chart - without)).sum())
        tokens += len(targets)
    return nll / tokens, kl / tokens


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a ChartWiz checkpoint folder")
    parser.add_argument("--dataset", required=True, help="a `chartwiz data build` folder (its finetune table rows)")
    parser.add_argument("--probe-charts", type=int, default=300, help="train-split charts the probes are fitted on")
    parser.add_argument("--test-charts", type=int, default=100, help="test-split charts everything is scored on")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    # eager attention: SDPA returns no attention weights
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    processor = AutoProcessor.from_pretrained(args.model)
    train_rows = table_rows(args.dataset, "train", args.probe_charts)
    test_rows = table_rows(args.dataset, "test", args.test_charts)
    train, test = measure(model, processor, train_rows), measure(model, processor, test_rows)
    blank, shuffled = (measure(model, processor, test_rows, ablation) for ablation in ("blank", "shuffled"))
    types = (train_rows["chart_type"], test_rows["chart_type"])
    values = [
        np.array([first_value(row["completion"][0]["content"]) for row in rows]) for rows in (train_rows, test_rows)
    ]
    figures = {"probes": {}, "answer": {}, "attention": {}}
    for where in ("encoder", "projector", "answer_state"):
        figures["probes"][where] = {
            "chart_type_accuracy": probe_chart_type(train[where], types[0], test[where], types[1]),
            "first_value_r2": probe_value(train[where], values[0], test[where], values[1]),
        }
    chart_nll, _ = answer_scores(test, test)
    figures["answer"]["nll_chart"] = chart_nll
    for name, other in (("blank", blank), ("shuffled", shuffled)):
        figures["answer"][f"nll_{name}"], figures["answer"][f"kl_chart_{name}"] = answer_scores(test, other)
    figures["attention"] = [
        {"layer": layer, "share_on_image": share, "evenness_over_image": evenness}
        for layer, (share, evenness) in enumerate(test["attention"])
    ]
    figures["image_token_alikeness"] = token_alikeness(
        model, processor, test_rows.select(range(min(20, len(test_rows))))
    )
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(figures, file, indent=2)
    return figures


if __name__ == "__main__":
    main()
