"""
Peak resident memory of `compose_chartwiz` joining a DePlot-sized Pix2Struct checkpoint (282M parameters, float32)
and a ~1.2B-parameter Llama (bfloat16) into a ChartWiz checkpoint, each step in a fresh process: importing the
libraries, loading the two parts and reading their weights once (the floor any compose needs), and the whole compose
including the save.

    python benchmarks/bench_compose_memory.py --work-dir /tmp/chartwiz-compose

The random parts are written to `--work-dir` once (about 3.7 GB) and reused by later runs. Put another checkout
first on PYTHONPATH to measure its `chartwiz_hf` with the same parts.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from models import llama_1b3_config
from peak_rss import run_measured


IMPORTS = "import torch, transformers, chartwiz_hf"
LOAD_PARTS = """
import torch
from transformers import AutoModelForCausalLM, Pix2StructForConditionalGeneration
encoder = Pix2StructForConditionalGeneration.from_pretrained({vision!r}, dtype="auto").encoder
language_model = AutoModelForCausalLM.from_pretrained({text!r}, dtype="auto")
# Read every weight once, as saving the composed model does: loaded weights are memory-mapped until touched.
for parameter in [*encoder.parameters(), *language_model.parameters()]:
    parameter.data.view(-1)[:: 4096 // parameter.element_size()].sum()
"""
COMPOSE = """
from chartwiz_hf.compose import compose_chartwiz
compose_chartwiz({vision!r}, {text!r}, output_dir={out!r})
"""


def make_parts(work_dir: str) -> tuple[str, str]:
    """A DePlot-sized Pix2Struct (as google/deplot: float32) and a ~1.2B Llama in bfloat16, with a tokenizer."""
    import torch
    from transformers import LlamaForCausalLM, Pix2StructConfig, Pix2StructForConditionalGeneration

    from chartwiz.models.tiny import train_byte_level_bpe

    vision_dir, text_dir = os.path.join(work_dir, "deplot-sized"), os.path.join(work_dir, "llama-1b")
    if not os.path.isfile(os.path.join(vision_dir, "model.safetensors")):
        torch.manual_seed(0)
        # pix2struct-base sizes (google/deplot): 768-wide, 12-layer encoder and decoder
        Pix2StructForConditionalGeneration(Pix2StructConfig()).save_pretrained(vision_dir)
    if not os.path.isfile(os.path.join(text_dir, "config.json")):
        texts = ["차트의 가장 큰 값은 서울입니다.", "chart table value 1 2 3"]
        tokenizer = train_byte_level_bpe(texts, 400, ["<|endoftext|>"], eos_token="<|endoftext|>")
        # 42dot-1.3B-like layers; the vocabulary is the tokenizer's, so compose has to add <image> and resize
        config = llama_1b3_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
        torch.manual_seed(0)
        LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).save_pretrained(text_dir)
        tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir


def chartwiz_location(where: dict) -> str:
    """Where the measured processes import `chartwiz_hf` from."""
    script = "import chartwiz_hf, os; print(os.path.dirname(chartwiz_hf.__file__))"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, **where).stdout.strip()


def folder_mib(path: str) -> float:
    return sum(entry.stat().st_size for entry in os.scandir(path) if entry.name.endswith(".safetensors")) / 2**20


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work-dir", default="/tmp/chartwiz-compose")
    parser.add_argument("--label", default="", help="a name for this run in the output (e.g. the code measured)")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    vision_dir, text_dir = make_parts(args.work_dir)
    out = os.path.join(args.work_dir, "composed")
    shutil.rmtree(out, ignore_errors=True)

    # Run away from any checkout, so `chartwiz_hf` is the installed one or the one first on PYTHONPATH.
    where = {"env": {**os.environ, "HF_HUB_OFFLINE": "1"}, "cwd": args.work_dir}
    imports = run_measured([sys.executable, "-c", IMPORTS], **where)
    parts = run_measured([sys.executable, "-c", LOAD_PARTS.format(vision=vision_dir, text=text_dir)], **where)
    script = COMPOSE.format(vision=vision_dir, text=text_dir, out=out)
    compose = run_measured([sys.executable, "-c", script], stdout=subprocess.DEVNULL, **where)
    print(
        json.dumps(
            {
                "label": args.label,
                "chartwiz_hf": chartwiz_location(where),
                "vision_weights_mib": round(folder_mib(vision_dir)),
                "text_weights_mib": round(folder_mib(text_dir)),
                "composed_weights_mib": round(folder_mib(out)),
                "imports_peak_rss_mib": round(imports["peak_rss_single_mib"]),
                "load_parts_peak_rss_mib": round(parts["peak_rss_single_mib"]),
                "compose_peak_rss_mib": round(compose["peak_rss_single_mib"]),
                "compose_seconds": round(compose["seconds"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
