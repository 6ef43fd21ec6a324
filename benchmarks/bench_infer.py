"""
Questions/s of batch inference (`chartwiz.batch.run.run_inference`, what `chartwiz infer` runs) against a
one-question-at-a-time loop (what the original did with a question file), on the same questions about the same
charts read from disk; and the share of each run the model spends waiting for images and inputs, with and without
the background worker.

    python benchmarks/bench_infer.py --model tiny
    python benchmarks/bench_infer.py --model small
    python benchmarks/bench_infer.py --model 100m --device cuda --dtype bfloat16 --batch-size 32

With `--engine vllm` (in an environment with vLLM: `make setup-vllm`, then `.venv-vllm/bin/python`), it compares
instead the two engines of `chartwiz infer` on the same questions: `--engine transformers` (batches of
`--batch-size`) and `--engine vllm` (vLLM's offline engine on the saved model, every question in flight):

    VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind .venv-vllm/bin/python benchmarks/bench_infer.py \
        --model small --engine vllm
    python benchmarks/bench_infer.py --model 1b3 --engine vllm --device cuda --dtype bfloat16 --batch-size 32
"""

import argparse
import atexit
import json
import os
import shutil
import tempfile
import time

import torch
from charts import QUESTIONS, chart_images
from models import make_model

from chartwiz.batch.questions import ImageFolder, read_question_file
from chartwiz.batch.run import run_inference
from chartwiz.inference import answer_questions, load_chart_image


def write_question_file(folder: str, questions: int, charts: int) -> str:
    """`questions` questions about `charts` JPEG charts: conversations of 1 to 4 turns with reference answers."""
    for index, image in enumerate(chart_images(charts)):
        image.convert("RGB").save(os.path.join(folder, f"chart{index}.jpg"), quality=90)
    records, asked, index = [], 0, 0
    while asked < questions:
        turns = min(1 + index % 4, questions - asked)
        conversation = []
        for turn in range(turns):
            question = QUESTIONS[(index + turn) % len(QUESTIONS)]
            conversation.append({"from": "human", "value": f"<image>\n{question}" if turn == 0 else question})
            answer = f"{index}번 차트의 {turn + 1}번째 답은 {index * 7 % 50}입니다."
            conversation.append({"from": "gpt", "value": answer})
        records.append({"id": f"q{index}", "image": f"chart{index % charts}.jpg", "conversations": conversation})
        asked += turns
        index += 1
    path = os.path.join(folder, "questions.jsonl")
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return path


def one_at_a_time(model, processor, questions, image_folder, generate_kwargs):
    for question in questions:
        image = load_chart_image(os.path.join(image_folder, question.image))
        history = [(asked, reference) for _, asked, reference in question.history]
        answer_questions(model, processor, [image], [question.question], [history], **generate_kwargs)


def compare_engines(args, model, processor, questions, work: str) -> dict:
    """Best-of-`repeats` questions/s of the transformers engine and the vLLM engine, taking turns."""
    from chartwiz.serving.engine import VLLMEngine

    checkpoint = os.path.join(work, "model")
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    vllm_engine = VLLMEngine(checkpoint, dtype=args.dtype, max_in_flight=len(questions))
    best = {"transformers": None, "vllm": None}
    try:
        for _ in range(args.repeats):
            for name, engine in (("transformers", model), ("vllm", vllm_engine)):
                answers = os.path.join(work, f"answers-{name}-{time.monotonic_ns()}.jsonl")
                summary = run_inference(
                    engine,
                    processor,
                    questions,
                    ImageFolder(work),
                    answers,
                    {"model": args.model, "engine": name},
                    batch_size=args.batch_size,
                    max_new_tokens=args.new_tokens,
                    progress=False,
                    min_new_tokens=args.new_tokens,
                )
                assert summary.answered == len(questions), summary
                if best[name] is None or summary.seconds < best[name].seconds:
                    best[name] = summary
    finally:
        vllm_engine.close()
    import vllm

    return {
        "vllm": vllm.__version__,
        "transformers_engine_questions_per_s": round(best["transformers"].questions_per_second, 2),
        "vllm_engine_questions_per_s": round(best["vllm"].questions_per_second, 2),
        "speedup": round(best["transformers"].seconds / best["vllm"].seconds, 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "100m", "1b3"])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--charts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-patches", type=int, default=None, help="image tokens per chart (config default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="vllm: compare chartwiz infer's two engines instead of batching with one question at a time",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = make_model(args.model, max_patches=args.max_patches)
    model = model.to(args.device, getattr(torch, args.dtype))
    work = tempfile.mkdtemp(prefix="chartwiz-bench-infer-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    questions = read_question_file(write_question_file(work, args.questions, args.charts))
    assert len(questions) == args.questions
    # Every answer as long as every other, so both ways do the same work whatever the random model says.
    generate_kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    answer_questions(model, processor, chart_images(2), QUESTIONS[:2], max_new_tokens=2)  # warm-up
    setup = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "parameters": model.num_parameters(),
        "image_tokens": processor.image_seq_length,
        "torch_threads": torch.get_num_threads(),
        "questions": len(questions),
        "new_tokens_per_question": args.new_tokens,
        "batch_size": args.batch_size,
    }
    if args.engine == "vllm":
        print(json.dumps({**setup, **compare_engines(args, model, processor, questions, work)}))
        return

    def batched(background: bool):
        answers = os.path.join(work, f"answers-{time.monotonic_ns()}.jsonl")
        return run_inference(
            model,
            processor,
            questions,
            ImageFolder(work),
            answers,
            {"model": args.model},
            batch_size=args.batch_size,
            max_new_tokens=args.new_tokens,
            background=background,
            progress=False,
            min_new_tokens=args.new_tokens,
        )

    # The three take turns, best of each, so that the machine's drift hits them alike.
    loop_s = float("inf")
    best = {True: None, False: None}
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_at_a_time(model, processor, questions, work, generate_kwargs)
        loop_s = min(loop_s, time.perf_counter() - start)
        for background in (True, False):
            summary = batched(background)
            if best[background] is None or summary.seconds < best[background].seconds:
                best[background] = summary

    print(
        json.dumps(
            {
                **setup,
                "one_at_a_time_questions_per_s": round(len(questions) / loop_s, 2),
                "infer_questions_per_s": round(best[True].questions_per_second, 2),
                "speedup": round(loop_s / best[True].seconds, 2),
                "wait_share_background": round(best[True].wait_share, 4),
                "infer_no_background_questions_per_s": round(best[False].questions_per_second, 2),
                "wait_share_no_background": round(best[False].wait_share, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
