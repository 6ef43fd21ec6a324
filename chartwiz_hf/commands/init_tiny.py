"""`chartwiz init-tiny`: a tiny random ChartWiz, made offline in seconds."""

from . import check_output_dir


def run(args):
    from ..tiny import make_tiny_chartwiz

    check_output_dir(args.out, args.overwrite)
    model, _ = make_tiny_chartwiz(args.out, seed=args.seed, max_patches=args.max_patches)
    print(f"Saved a tiny random ChartWiz ({model.num_parameters():,} parameters) to {args.out}")


def register(subcommands) -> None:
    parser = subcommands.add_parser("init-tiny", help="save a tiny random ChartWiz, made offline in seconds")
    parser.add_argument("out", help="output directory (new or empty, unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-patches", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="write into OUT even if it is not empty")
    parser.set_defaults(func=run, prog=parser.prog)
