"""
Images/s of ChartWizImageProcessor vs transformers' Pix2StructImageProcessor(is_vqa=True) with the same DePlot
header, font and max_patches, on varied chart images, both with one image per call and with all of them in one
call; checks that the outputs are identical.

    python benchmarks/bench_image_processing.py --images 48 --repeats 5
    python benchmarks/bench_image_processing.py --images 48 --repeats 5 --torch-threads 1

The reference is transformers' PIL Pix2Struct processor (`Pix2StructImageProcessorPil` on transformers 5,
`Pix2StructImageProcessor` on 4). Both run the same torch interpolation, whose cost depends on torch's thread count:
`--torch-threads` sets it for both sides.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import transformers
from charts import SIZES, chart_images

from chartwiz_hf import ChartWizImageProcessor
from chartwiz_hf.image_processing_chartwiz import DEPLOT_HEADER_TEXT, bundled_font_path


def reference_processor(max_patches: int, font: str):
    """transformers' PIL Pix2Struct processor drawing the header with `font`, and the keyword arguments it needs."""
    pil_class = getattr(transformers, "Pix2StructImageProcessorPil", None)
    if pil_class is None:
        return transformers.Pix2StructImageProcessor(is_vqa=True, max_patches=max_patches), {"font_path": font}

    class WithFont(pil_class):
        # transformers 5 drops a `font_path` passed to the call (it is not one of its declared keyword arguments)
        # and would download Arial; its own render_header takes the font.
        def render_header(self, image, header, font_bytes=None, font_path=None):
            return super().render_header(image, header, font_path=font)

    return WithFont(is_vqa=True, max_patches=max_patches), {}


def best_times(functions: dict, repeats: int) -> dict:
    """
    Best wall and process CPU time of each function, the functions taking turns so that machine noise hits them
    alike.
    """
    best = {name: {"wall_s": float("inf"), "cpu_s": float("inf")} for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            best[name]["wall_s"] = min(best[name]["wall_s"], time.perf_counter() - wall)
            best[name]["cpu_s"] = min(best[name]["cpu_s"], time.process_time() - cpu)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-patches", type=int, default=512)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch's thread count (default: torch's)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    images = chart_images(args.images)
    font = bundled_font_path()
    reference, reference_kwargs = reference_processor(args.max_patches, font)
    ours = ChartWizImageProcessor(max_patches=args.max_patches)
    ours_one_worker = ChartWizImageProcessor(max_patches=args.max_patches, num_workers=1)

    def run_reference(batch):
        return reference(batch, header_text=DEPLOT_HEADER_TEXT, return_tensors="np", **reference_kwargs)

    def identical(expected, actual) -> bool:
        return bool(
            np.array_equal(expected["flattened_patches"], actual["pixel_values"])
            and np.array_equal(expected["attention_mask"], actual["pixel_attention_mask"])
        )

    same = identical(run_reference(images), ours(images, return_tensors="np"))
    same = same and all(
        identical(run_reference(image), ours(image, return_tensors="np")) for image in images[: len(SIZES)]
    )
    load_before = os.getloadavg()
    best = best_times(
        {
            "pix2struct_per_call": lambda: [run_reference(image) for image in images],
            "chartwiz_per_call": lambda: [ours(image, return_tensors="np") for image in images],
            "pix2struct_batch": lambda: run_reference(images),
            "chartwiz_batch": lambda: ours(images, return_tensors="np"),
            "chartwiz_batch_one_worker": lambda: ours_one_worker(images, return_tensors="np"),
        },
        args.repeats,
    )
    load_after = os.getloadavg()

    def speed(name):
        return {
            "images_per_s": round(len(images) / best[name]["wall_s"], 1),
            "cpu_ms_per_image": round(1000 * best[name]["cpu_s"] / len(images), 2),
        }

    def ratio(reference_name, name, clock):
        return round(best[reference_name][clock] / best[name][clock], 2)

    print(
        json.dumps(
            {
                "images": len(images),
                "sizes": sorted({image.size for image in images}),
                "max_patches": args.max_patches,
                "transformers": transformers.__version__,
                "torch_threads": torch.get_num_threads(),
                "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "identical_output": same,
                **{name: speed(name) for name in best},
                "speedup_per_call": ratio("pix2struct_per_call", "chartwiz_per_call", "wall_s"),
                "speedup_per_call_cpu": ratio("pix2struct_per_call", "chartwiz_per_call", "cpu_s"),
                "speedup_batch": ratio("pix2struct_batch", "chartwiz_batch", "wall_s"),
                "speedup_batch_one_worker": ratio("pix2struct_batch", "chartwiz_batch_one_worker", "wall_s"),
            }
        )
    )
    if not same:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
