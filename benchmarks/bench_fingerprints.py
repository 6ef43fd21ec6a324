"""
What the resume fingerprints cost: a 7B-sized checkpoint (three 4.9 GB safetensors shards, sparse on disk, so the
machine needs no 15 GB) and the questions of a question file with their chart images, as `chartwiz infer` and
`chartwiz evaluate` fingerprint them at the start of every run.

    python benchmarks/bench_fingerprints.py --questions 705 --charts 100 --repeats 5
"""

import argparse
import json
import os
import struct
import tempfile
import time

import psutil
from charts import QUESTIONS, chart_images

from chartwiz.batch.questions import ImageFolder, read_question_file
from chartwiz.batch.run_store import question_fingerprint
from chartwiz.fingerprints import checkpoint_fingerprint


SHARD_BYTES = 4_900_000_000


def sparse_safetensors(path: str, size: int, name: str) -> None:
    """A safetensors file of `size` bytes holding one bfloat16 tensor, its data a hole the file system leaves out."""
    elements = (size - 4096) // 2
    header = json.dumps({name: {"dtype": "BF16", "shape": [elements], "data_offsets": [0, elements * 2]}})
    header = header.encode().ljust(4096 - 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header)) + header)
        file.truncate(8 + len(header) + elements * 2)


def seven_b_checkpoint(folder: str) -> None:
    shards = [f"model-{index:05d}-of-00003.safetensors" for index in range(1, 4)]
    for index, shard in enumerate(shards):
        sparse_safetensors(os.path.join(folder, shard), SHARD_BYTES, f"model.layers.{index}.weight")
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as file:
        json.dump({"weight_map": {f"model.layers.{i}.weight": shard for i, shard in enumerate(shards)}}, file)
    with open(os.path.join(folder, "config.json"), "w") as file:
        json.dump({"model_type": "chartwiz", "text_config": {"hidden_size": 4096, "num_hidden_layers": 32}}, file)
    # A tokenizer.json of the size of a 32K-token byte-level BPE's.
    with open(os.path.join(folder, "tokenizer.json"), "w") as file:
        json.dump(
            {"model": {"vocab": {f"token{index}": index for index in range(32000)}}, "merges": ["a b"] * 60000}, file
        )


def timed(function, repeats: int) -> tuple[float, int]:
    """Best wall time over `repeats`, and the bytes the process read in the last one."""
    best, process = float("inf"), psutil.Process()
    for _ in range(repeats):
        before = process.io_counters().read_chars
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
        read = process.io_counters().read_chars - before
    return best, read


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=705)
    parser.add_argument("--charts", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model = os.path.join(work, "chartwiz-7b")
        os.makedirs(model)
        seven_b_checkpoint(model)
        size = sum(os.path.getsize(os.path.join(model, name)) for name in os.listdir(model))
        seconds, read = timed(lambda: checkpoint_fingerprint(model), args.repeats)
        print(f"checkpoint of {size / 1e9:.1f} GB: {seconds * 1000:.1f} ms, {read / 1e6:.2f} MB read")

        images = os.path.join(work, "images")
        os.makedirs(images)
        for index, chart in enumerate(chart_images(args.charts)):
            chart.convert("RGB").save(os.path.join(images, f"chart{index}.jpg"), quality=90)
        records = [
            {"id": f"q{index}", "image": f"chart{index % args.charts}.jpg", "text": QUESTIONS[index % len(QUESTIONS)]}
            for index in range(args.questions)
        ]
        path = os.path.join(work, "questions.jsonl")
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        questions = read_question_file(path)
        image_bytes = sum(os.path.getsize(os.path.join(images, name)) for name in os.listdir(images))

        def fingerprint_questions():
            loader = ImageFolder(images)  # a new run: no digest remembered yet
            for question in questions:
                question_fingerprint(question, loader)

        seconds, read = timed(fingerprint_questions, args.repeats)
        print(
            f"{len(questions)} questions about {args.charts} charts ({image_bytes / 1e6:.1f} MB of JPEG): "
            f"{seconds * 1000:.0f} ms ({seconds / len(questions) * 1e6:.0f} us a question), {read / 1e6:.1f} MB read"
        )


if __name__ == "__main__":
    main()
