"""
Greedy generation throughput on CPU: eight questions answered one at a time (as the original did) vs as one
left-padded batch of eight, both through `chartwiz.inference.generation.answer_questions` (image processing included).

    python benchmarks/bench_generation.py --model small --new-tokens 256
    python benchmarks/bench_generation.py --model small --new-tokens 256 --max-patches 64
    python benchmarks/bench_generation.py --model tiny --ready-mask on   # force the ready-made padding mask

Run it with each test lane's interpreter (`.venv` for transformers 5, `.venv-4.57`) to compare the majors.
"""

import argparse
import json
import time

import torch
import transformers
from charts import QUESTIONS, chart_images
from models import make_model

import chartwiz_hf.modeling_chartwiz as modeling
from chartwiz.inference import answer_questions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="small", choices=["tiny", "small", "100m"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-patches", type=int, default=None, help="image tokens per chart (config default: 512)")
    parser.add_argument(
        "--ready-mask",
        choices=["auto", "on", "off"],
        default="auto",
        help="the ready-made padding mask: as the model decides (auto), or forced on or off",
    )
    args = parser.parse_args()
    if args.ready_mask != "auto":
        modeling._READY_MASK = args.ready_mask == "on"
    torch.manual_seed(0)
    model, processor = make_model(args.model, max_patches=args.max_patches)
    images = chart_images(args.batch_size)
    questions = (QUESTIONS * args.batch_size)[: args.batch_size]
    kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    answer_questions(model, processor, images[:1], questions[:1], max_new_tokens=2)  # warm-up
    answer_questions(model, processor, images[:2], questions[:2], max_new_tokens=2)

    def one_at_a_time():
        for image, question in zip(images, questions):
            answer_questions(model, processor, [image], [question], **kwargs)

    def as_one_batch():
        answer_questions(model, processor, images, questions, **kwargs)

    # The two take turns, best of each, so that machine noise hits them alike.
    sequential_s = batch_s = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_at_a_time()
        sequential_s = min(sequential_s, time.perf_counter() - start)
        start = time.perf_counter()
        as_one_batch()
        batch_s = min(batch_s, time.perf_counter() - start)

    tokens = args.batch_size * args.new_tokens
    print(
        json.dumps(
            {
                "model": args.model,
                "transformers": transformers.__version__,
                "ready_mask": modeling._READY_MASK,
                "parameters": model.num_parameters(),
                "image_tokens": processor.image_seq_length,
                "torch_threads": torch.get_num_threads(),
                "new_tokens_per_question": args.new_tokens,
                "one_at_a_time_tokens_per_s": tokens / sequential_s,
                "batch_tokens_per_s": tokens / batch_s,
                "speedup": sequential_s / batch_s,
            }
        )
    )


if __name__ == "__main__":
    main()
