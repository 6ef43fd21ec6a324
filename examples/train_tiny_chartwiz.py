"""
Trains the tiny ChartWiz shipped in `examples/tiny-chartwiz`: the shipped tiny pretrained DePlot encoder
(`examples/tiny-deplot`) and a language model of the tiny one's shape and tokenizer (`examples/tiny-lm`) composed
with a new projector, then the real recipe, `recipes/sft_chartwiz.py` with the `recipes/chartwiz-tiny` recipes, run
longer than the quickstart can, over synthetic charts that `chartwiz synth` draws with a seed no quickstart or test
split uses. Stage 2 begins with its table rows alone (asked with their instruction, as evaluation asks them), then
the whole instruction mix: in the mix, whose other tasks it can answer from the text alone, a language model never
learnt to read a chart's table. By default the language model starts from new weights of standard deviation 0.1, not
from the pretrained tiny one: composed and given the same table steps, the pretrained one read far fewer titles
(`docs/reading.md`); with new weights there is nothing for stage 1 (the projector alone) to align to, so it is
skipped unless `--stage1-steps` asks for it. A learning curve (held-out tables and questions at several step counts,
beside blank and shuffled charts) goes into the model card.

```bash
python examples/train_tiny_chartwiz.py --out examples/tiny-chartwiz   # the shipped model: 1-2 hours on 2 CPU cores
python examples/train_tiny_chartwiz.py --out /tmp/tiny-chartwiz --work-dir /tmp/tcw --charts 60 \
    --stage1-steps 4 --table-steps 4 --stage2-steps 8 --curve 4 8       # a smoke run, minutes
```

Everything made on the way (charts, datasets, checkpoints, evaluations) stays in `--work-dir`; run the same command
again after an interruption and it continues where it stopped: the charts are kept, each training stage resumes from
its last checkpoint, finished evaluations are kept and an unfinished one resumes from its last batch. Each step
prints the command a user would type for it.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import textwrap

# The script's own folder is on sys.path: the quickstart beside it runs and resumes its steps the same way, the tiny
# DePlot's script keeps the time of each phase and the tiny language model's draws and builds the charts.
from pretrain_tiny_deplot import Timings
from pretrain_tiny_lm import draw_and_build
from quickstart import (
    REPO,
    TEXT_INITIALIZER_RANGE,
    TINY_DEPLOT,
    TINY_LM,
    Progress,
    chartwiz,
    evaluate_command,
    read_metrics,
    recipe,
)

from chartwiz.names import BUILT_CONFIGS


# What the card's learning curve shows, as in the quickstart's table.
CURVE_METRICS = (
    ("table", "rms_f1"),
    ("table", "rms_units_f1"),
    ("qa", "relaxed_accuracy"),
    ("description", "chart_type_named"),
)
ABLATIONS = {"chart": [], "blank": ["--blank-images"], "shuffled": ["--shuffle-images"]}
# The files of a ChartWiz checkpoint folder that make the model; a Trainer checkpoint also holds its optimizer state.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "NanumGothic.ttf",
    "configuration_chartwiz.py",
    "modeling_chartwiz.py",
    "processing_chartwiz.py",
    "image_processing_chartwiz.py",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to save the trained checkpoint and its card")
    parser.add_argument("--work-dir", default="outputs/tiny-chartwiz-work", help="charts, datasets, checkpoints")
    parser.add_argument("--charts", type=int, default=12000, help="synthetic charts drawn (1 in 100 held out)")
    parser.add_argument(
        "--seed", type=int, default=11, help="synth and training seed; quickstart and tests use others"
    )
    parser.add_argument("--max-patches", type=int, default=256, help="patches (= image tokens) per chart")
    parser.add_argument("--text", default=TINY_LM, help="the causal language model (and tokenizer) to compose with")
    parser.add_argument(
        "--text-weights",
        choices=("new", "pretrained"),
        default="new",
        help="new: --text's shape and tokenizer with new weights (--text-initializer-range); pretrained: its weights",
    )
    parser.add_argument(
        "--text-initializer-range", type=float, default=TEXT_INITIALIZER_RANGE, help="std of the new weights"
    )
    parser.add_argument("--text-seed", type=int, default=0, help="seed of the new weights")
    parser.add_argument(
        "--stage1-steps",
        type=int,
        default=0,
        help="stage 1 steps (projector alone, tables); 0 skips it: a new language model has nothing to align it to",
    )
    parser.add_argument(
        "--table-steps", type=int, default=2400, help="stage 2's first steps: tables alone (projector and LM)"
    )
    parser.add_argument(
        "--table-learning-rate", type=float, default=2e-3, help="learning rate of the table steps (cosine)"
    )
    parser.add_argument("--stage2-steps", type=int, default=4000, help="stage 2 steps (projector and LM, all tasks)")
    parser.add_argument(
        "--curve", type=int, nargs="+", default=[1000, 2000, 3000, 4000], help="stage 2 steps evaluated"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every step (results depend on it)")
    parser.add_argument("--num-proc", type=int, default=2, help="processes drawing the charts and building the data")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="answer length limit in evaluation")
    args = parser.parse_args(argv)
    if args.stage2_steps not in args.curve:
        parser.error(f"--curve must include the last stage 2 step ({args.stage2_steps}): the shipped model's point.")
    if any(step < 1 or step > args.stage2_steps for step in args.curve):
        parser.error(f"--curve steps must lie between 1 and --stage2-steps ({args.stage2_steps}).")
    return args


def curve_point(progress: Progress, number: str, model: str, data_dir: str, reports: str, args) -> dict:
    """The held-out scores of `model` with the charts and in both ablations: {"chart": metrics, "blank": ...}."""
    scores = {}
    for shown, flags in ABLATIONS.items():
        report_dir = os.path.join(reports, shown)
        step = f"{number}{shown[0]}"
        # No --restart for a new step: `chartwiz evaluate` keeps only the answers in the folder that still hold (the
        # same model files, data and settings), so an evaluation run by hand with the same command counts.
        progress.run(
            f"{step} Evaluation of {os.path.basename(model)}, {shown} charts, on the held-out split",
            evaluate_command(model, data_dir, report_dir, args.max_new_tokens, *flags),
        )
        scores[shown] = read_metrics(report_dir)["by_task"]
    return scores


def curve_table(curve: dict, shipped: dict | None = None) -> str:
    """
    A Markdown table: one row per stage 2 step count, each metric with the chart / blank / shuffled charts, and a
    last row for the folder as shipped where given.
    """
    header = "| stage 2 steps | " + " | ".join(f"{metric} ({task})" for task, metric in CURVE_METRICS) + " |"
    lines = [header, "| ---: |" + " ---: |" * len(CURVE_METRICS)]
    rows = sorted(curve.items(), key=lambda item: int(item[0]))
    if shipped is not None:
        rows.append(("shipped, float16 weights", shipped))
    for label, scores in rows:
        cells = []
        for task, metric in CURVE_METRICS:
            values = [scores[shown].get(task, {}).get(metric) for shown in ABLATIONS]
            cells.append(" / ".join("n/a" if value is None else f"{value:.1f}" for value in values))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def export(checkpoint: str, out: str) -> None:
    """
    The model's files of a Trainer checkpoint, without its optimizer state, as a fresh folder `out`. The weights are
    stored in float16, which halves them so that the folder (the header font is 4.7 MB of it) stays under 10 MB; the
    config keeps float32, so both transformers majors load them back into float32 and compute as in training.
    """
    from safetensors.torch import load_file, save_file

    staging = f"{out}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for name in MODEL_FILES:
        source = os.path.join(checkpoint, name)
        if name == "model.safetensors":
            weights = load_file(source)
            halved = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
            save_file(halved, os.path.join(staging, name), metadata={"format": "pt"})
        elif os.path.isfile(source):
            shutil.copy2(source, os.path.join(staging, name))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # `kill` ends the run as Ctrl-C does: the step's process is stopped and the time spent so far is kept.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    timings = Timings(os.path.join(work, "timings.json"))
    data_dir = draw_and_build(work, args.charts, args.seed, args.num_proc, timings, 0.01, BUILT_CONFIGS)
    base, stage1, tables, stage2, reports = (
        os.path.join(work, name) for name in ("chartwiz-tiny", "stage1", "tables", "stage2", "reports")
    )
    names = ("text_weights", "text_initializer_range", "text_seed", "charts", "seed", "max_patches", "stage1_steps")
    settings = {key: getattr(args, key) for key in (*names, "table_steps", "table_learning_rate", "stage2_steps")}
    settings.update(text=os.path.abspath(args.text), curve=sorted(args.curve), threads=args.threads)
    settings["max_new_tokens"] = args.max_new_tokens
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    progress = Progress(work, settings, env=env)

    with timings.measure("compose"):
        text = args.text
        if args.text_weights == "new":
            text = os.path.join(work, "language-model")
            progress.run(
                "0 A language model of the tiny one's shape and tokenizer, with new weights",
                chartwiz(
                    "init-tiny", text, "--language-model-only", "--like", args.text,
                    "--initializer-range", str(args.text_initializer_range), "--seed", str(args.text_seed),
                    "--overwrite",
                ),
            )  # fmt: skip
        progress.run(
            "1 ChartWiz from the tiny pretrained DePlot encoder and the language model, and a new projector",
            chartwiz(
                "compose", "--vision", TINY_DEPLOT, "--text", text, "--out", base,
                "--max-patches", str(args.max_patches), "--seed", str(args.seed), "--overwrite",
            ),
        )  # fmt: skip
    start = base
    if args.stage1_steps:
        with timings.measure("stage 1"):
            progress.run(
                "2 Stage 1: chart -> table, the projector alone (encoder and language model frozen)",
                recipe("pretrain", base, data_dir, stage1, args.seed, args.stage1_steps, progress.is_new("2")),
            )
        start = stage1
    # The finetune recipe's table rows alone (the tiny `tables` recipe): the same rows, prompt and trained parts as in
    # the mix after it.
    table_stage = recipe("tables", start, data_dir, tables, args.seed, args.table_steps, progress.is_new("3"))
    table_stage += ["--learning_rate", str(args.table_learning_rate)]
    with timings.measure("stage 2 tables"):
        progress.run("3 Stage 2, first its tables: chart -> table asked with the table instruction", table_stage)
    # Every curve point is kept as a checkpoint: the saving interval is their greatest common divisor.
    spacing = _gcd(args.curve)
    finetune = recipe("finetune", tables, data_dir, stage2, args.seed, args.stage2_steps, progress.is_new("4"))
    finetune += ["--save_steps", str(spacing), "--save_total_limit", str(args.stage2_steps // spacing + 1)]
    with timings.measure("stage 2 mix"):
        progress.run("4 Stage 2: tables, descriptions, summaries and question answering", finetune)

    curve = {}
    with timings.measure("evaluations"):
        for point in sorted(args.curve):
            checkpoint = os.path.join(stage2, f"checkpoint-{point}")
            curve[str(point)] = curve_point(
                progress, f"5.{point}", checkpoint, data_dir, os.path.join(reports, str(point)), args
            )
    export(os.path.join(stage2, f"checkpoint-{args.stage2_steps}"), args.out)
    # The folder as shipped (float16 weights) is scored too: its row, not the checkpoint's, is what users load.
    with timings.measure("evaluations"):
        shipped = curve_point(progress, "6", args.out, data_dir, os.path.join(reports, "shipped"), args)
    with open(os.path.join(work, "curve.json"), "w", encoding="utf-8") as file:
        json.dump({**curve, "shipped": shipped}, file, indent=2)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as file:
        file.write(model_card(args, curve, shipped, timings.seconds))
    print(f"\n{curve_table(curve, shipped)}\n\nSaved {args.out}", flush=True)
    return curve


def _gcd(numbers) -> int:
    from math import gcd

    result = 0
    for number in numbers:
        result = gcd(result, number)
    return result


def model_card(args, curve: dict, shipped: dict, seconds: dict) -> str:
    command = " ".join(["python", "examples/train_tiny_chartwiz.py", *args.argv])
    hours = sum(seconds.values()) / 3600
    phases = ", ".join(f"{phase} {value / 3600:.1f} h" for phase, value in seconds.items())
    final = curve[str(args.stage2_steps)]
    threads = f"{args.threads} torch thread" + ("s" if args.threads > 1 else "")
    text = os.path.abspath(args.text)
    text = f"`{os.path.relpath(text, REPO) if text.startswith(REPO + os.sep) else args.text}`"
    if args.text_weights == "new":
        language_model = (
            f"a language model of {text}'s shape and tokenizer with new weights (standard deviation "
            f"{args.text_initializer_range:g}, seed {args.text_seed}; from these a language model learns to read "
            "the chart's title where the pretrained one barely does: docs/reading.md),"
        )
    else:
        language_model = f"the tiny pretrained Korean language model {text}"
    if args.stage1_steps:
        stage1 = f"stage 1, {args.stage1_steps} steps of chart -> table with the projector alone; "
    elif args.text_weights == "new":
        stage1 = "no stage 1 (with new language model weights, the projector alone has nothing to align to); "
    else:
        stage1 = "no stage 1; "
    about = textwrap.fill(
        "A tiny ChartWiz trained to read synthetic charts: the shipped tiny DePlot encoder (`examples/tiny-deplot`) "
        f"and {language_model} composed with a new `mlp2x_gelu` projector ({args.max_patches} image tokens), then "
        "trained by the real recipe (`recipes/sft_chartwiz.py` with the `recipes/chartwiz-tiny` recipes): "
        f"{stage1}stage 2, first {args.table_steps} steps of its table rows alone (`--dataset_tasks table`, learning "
        f"rate {args.table_learning_rate:g}), then {args.stage2_steps} steps of tables, descriptions, summaries and "
        "questions, with the projector and the language model (the encoder frozen throughout), batches of 8 drawn "
        f"at random. The charts are {args.charts:,} that `chartwiz synth --seed {args.seed}` draws; the "
        "quickstart's (seed 0) and the tests' were never in its training set. Made by "
        f"`examples/train_tiny_chartwiz.py` in {hours:.1f} hours on a shared 2-core CPU ({phases}), {threads}:",
        width=119,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
language: [ko]
tags: [chartwiz, chart-question-answering, chart-to-table]
---

# tiny-chartwiz

{about}

```bash
{command}
```

It is test and demo material, not a model for real charts: it reads charts like ChartWiz's synthetic ones.

## Learning curve

Held-out charts of the same draw ({final["chart"].get("table", {}).get("n", "?")} tables, all tasks of the `all`
config's test split), greedy answers; each cell is the score with the chart / a blank white image / another
held-out chart (percent):

{curve_table(curve, shipped)}

What it reads is where the first figure of a cell stands above the other two; where the three are alike, it answers
as well without the chart (`docs/reading.md` in the repository says what it reads and what it does not yet).

The weights are stored in float16 to keep the folder under 10 MB (the last row scores them as shipped); the config
says float32, so they load into float32 on both transformers majors.

## Quick start

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

from chartwiz.inference import load_chart_image

model = AutoModelForImageTextToText.from_pretrained("examples/tiny-chartwiz", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("examples/tiny-chartwiz", trust_remote_code=True)
question = {{"type": "text", "text": "이 차트를 테이블 정보로 변경해줘."}}
messages = [{{"role": "user", "content": [{{"type": "image"}}, question]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=load_chart_image("chart.png"), text=prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=160)
print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```
"""


if __name__ == "__main__":
    main()
