"""
Images/s of ChartWizImageProcessor vs transformers' Pix2StructImageProcessor(is_vqa=True) with the same DePlot
header, font and max_patches, on varied chart images; checks that the outputs are identical.

    python benchmarks/bench_image_processing.py --images 48 --repeats 3
"""

import argparse
import json
import time

import numpy as np
import torch
from charts import chart_images
from transformers import Pix2StructImageProcessor

from chartwiz_hf import ChartWizImageProcessor
from chartwiz_hf.image_processing_chartwiz import DEPLOT_HEADER_TEXT, bundled_font_path


def best_times(functions: dict, repeats: int) -> dict:
    """Best wall time of each function, the functions taking turns so that machine noise hits them alike."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-patches", type=int, default=512)
    args = parser.parse_args()
    images = chart_images(args.images)
    font = bundled_font_path()
    reference = Pix2StructImageProcessor(is_vqa=True, max_patches=args.max_patches)
    ours = ChartWizImageProcessor(max_patches=args.max_patches)
    ours_one_thread = ChartWizImageProcessor(max_patches=args.max_patches, num_workers=1)

    def run_reference():
        return reference(images, header_text=DEPLOT_HEADER_TEXT, font_path=font, return_tensors="np")

    expected = run_reference()
    actual = ours(images, return_tensors="np")
    identical = bool(
        np.array_equal(expected["flattened_patches"], actual["pixel_values"])
        and np.array_equal(expected["attention_mask"], actual["pixel_attention_mask"])
    )
    best = best_times(
        {
            "reference": run_reference,
            "ours": lambda: ours(images, return_tensors="np"),
            "ours_one_worker": lambda: ours_one_thread(images, return_tensors="np"),
        },
        args.repeats,
    )
    reference_s, ours_s, ours_one_s = best["reference"], best["ours"], best["ours_one_worker"]
    print(
        json.dumps(
            {
                "images": len(images),
                "sizes": sorted({image.size for image in images}),
                "max_patches": args.max_patches,
                "torch_threads": torch.get_num_threads(),
                "identical_output": identical,
                "pix2struct_images_per_s": len(images) / reference_s,
                "chartwiz_images_per_s": len(images) / ours_s,
                "chartwiz_one_worker_images_per_s": len(images) / ours_one_s,
                "speedup": reference_s / ours_s,
                "speedup_one_worker": reference_s / ours_one_s,
            }
        )
    )
    if not identical:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
