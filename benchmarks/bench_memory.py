"""
Peak resident memory of loading a ChartWiz checkpoint and answering one question, for the tiny model and a
~100M-parameter one, each in a fresh process (with the baseline of just importing the libraries).

    python benchmarks/bench_memory.py --models tiny 100m --work-dir /tmp/chartwiz-memory
"""

import argparse
import json
import os
import sys

from peak_rss import run_measured


IMPORT_ONLY = "import torch, transformers, chartwiz_hf"
ANSWER = """
import sys
sys.path.insert(0, {bench!r})
from charts import chart_images
from chartwiz.inference import answer_questions, load_chartwiz
model, processor = load_chartwiz({directory!r})
print(answer_questions(model, processor, chart_images(1), ["가장 큰 값은 무엇인가요?"], max_new_tokens=32))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny", "100m"])
    parser.add_argument("--work-dir", default="/tmp/chartwiz-memory")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from models import make_model

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    baseline = run_measured([sys.executable, "-c", IMPORT_ONLY], env=env)
    print(json.dumps({"imports_only_peak_rss_mib": baseline["peak_rss_single_mib"]}))
    for name in args.models:
        directory = os.path.join(args.work_dir, name)
        model, _ = make_model(name, directory)
        weights_mib = os.path.getsize(os.path.join(directory, "model.safetensors")) / 2**20
        script = ANSWER.format(bench=os.path.dirname(os.path.abspath(__file__)), directory=directory)
        measured = run_measured([sys.executable, "-c", script], env=env, stdout=open(os.devnull, "w"))
        print(
            json.dumps(
                {
                    "model": name,
                    "parameters": model.num_parameters(),
                    "weights_mib": weights_mib,
                    "load_and_answer_peak_rss_mib": measured["peak_rss_single_mib"],
                    "seconds": measured["seconds"],
                }
            )
        )


if __name__ == "__main__":
    main()
