"""The `chartwiz` command line: compose, init-tiny, ask, data build and synth."""

import argparse
import logging
import sys


def _compose(args):
    from .compose import compose_chartwiz

    compose_chartwiz(
        args.vision,
        args.text,
        output_dir=args.out,
        projector_type=args.projector_type,
        max_patches=args.max_patches,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"Saved ChartWiz (model + processor) to {args.out}")


def _init_tiny(args):
    from .tiny import make_tiny_chartwiz

    model, _ = make_tiny_chartwiz(args.out, seed=args.seed, max_patches=args.max_patches)
    print(f"Saved a tiny random ChartWiz ({model.num_parameters():,} parameters) to {args.out}")


def _ask(args):
    from transformers import TextStreamer

    from .inference import answer_questions, check_question, load_chart_image, load_chartwiz

    question = check_question(args.question)
    image = load_chart_image(args.image)
    model, processor = load_chartwiz(args.model, device=args.device)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    answer_questions(model, processor, [image], [question], max_new_tokens=args.max_new_tokens, streamer=streamer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chartwiz", description="Korean chart question answering (ChartWiz).")
    commands = parser.add_subparsers(dest="command", required=True)

    compose = commands.add_parser("compose", help="join a Pix2Struct/DePlot encoder and a causal LM into a checkpoint")
    compose.add_argument("--vision", required=True, help="Pix2Struct/DePlot checkpoint (e.g. google/deplot)")
    compose.add_argument(
        "--text", required=True, help="causal LM with its tokenizer (e.g. maywell/Synatra-42dot-1.3B)"
    )
    compose.add_argument("--out", required=True, help="output directory")
    compose.add_argument("--projector-type", default="mlp2x_gelu", help="linear, identity or mlp{N}x_gelu")
    compose.add_argument("--max-patches", type=int, default=512, help="patches (= image tokens) per image")
    compose.add_argument("--trust-remote-code", action="store_true", help="allow the LM's own code from the Hub")
    compose.set_defaults(func=_compose)

    tiny = commands.add_parser("init-tiny", help="save a tiny random ChartWiz, made offline in seconds")
    tiny.add_argument("out", help="output directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--max-patches", type=int, default=64)
    tiny.set_defaults(func=_init_tiny)

    ask = commands.add_parser("ask", help="answer one question about a chart, streaming the answer")
    ask.add_argument("--model", required=True, help="ChartWiz checkpoint directory or Hub repo")
    ask.add_argument("image", help="chart image file")
    ask.add_argument("question", help="the question, e.g. '가장 큰 값은?'")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: where the model loads)")
    ask.set_defaults(func=_ask)

    from dataset_builder.cli import add_data_commands

    add_data_commands(commands)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as error:
        print(f"chartwiz {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
