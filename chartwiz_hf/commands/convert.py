"""`chartwiz convert`: turn a checkpoint of the original ChartWiz (LLaVA fork format) into a ChartWiz checkpoint."""

import argparse

from ..chat_templates import CHAT_TEMPLATES


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's options, for `chartwiz convert` and `python -m chartwiz_hf.convert_chartwiz_llava_to_hf`."""
    parser.add_argument(
        "--llava", required=True, help="the original checkpoint folder or Hub repo (config.json, and its weights)"
    )
    parser.add_argument(
        "--vision",
        default=None,
        help="Pix2Struct/DePlot checkpoint the original encoded with (default: mm_vision_tower)",
    )
    parser.add_argument("--mm-projector", default=None, help="a stage-1 mm_projector.bin (use with --text)")
    parser.add_argument("--text", default=None, help="the base language model of a stage-1 or LoRA run")
    parser.add_argument("--lora", default=None, help="a LoRA run's PEFT adapter folder")
    parser.add_argument(
        "--non-lora", default=None, help="a LoRA run's non_lora_trainables.bin (default: the one in --lora)"
    )
    parser.add_argument(
        "--keep-adapter", action="store_true", help="keep the LoRA adapter unmerged, saved in OUT/adapter"
    )
    parser.add_argument("--template", default="synatra_mini", choices=CHAT_TEMPLATES, help="chat template")
    parser.add_argument("--max-patches", type=int, default=512, help="patches (= image tokens) per image")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="dtype of the weights"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the converted folder to REPO")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")


def convert_from_args(args) -> None:
    from ..convert_chartwiz_llava_to_hf import convert_llava_to_chartwiz

    convert_llava_to_chartwiz(
        args.llava,
        output_dir=args.out,
        vision=args.vision,
        mm_projector=args.mm_projector,
        text=args.text,
        lora=args.lora,
        non_lora=args.non_lora,
        keep_adapter=args.keep_adapter,
        chat_template=args.template,
        max_patches=args.max_patches,
        dtype=args.dtype,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(f"Saved ChartWiz (model + processor) converted from {args.llava} to {args.out}")


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "convert", help="convert a checkpoint of the original ChartWiz (LLaVA fork format) to a ChartWiz checkpoint"
    )
    add_convert_arguments(parser)
    parser.set_defaults(func=convert_from_args, prog=parser.prog)
