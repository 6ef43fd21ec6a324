"""`chartwiz init-tiny`: a tiny random ChartWiz, made offline in seconds."""

from . import check_output_dir


def run(args):
    from ..tiny import dataset_corpus, make_tiny_chartwiz

    check_output_dir(args.out, args.overwrite)
    corpus = list(dataset_corpus(args.corpus)) if args.corpus else None
    model, _ = make_tiny_chartwiz(
        args.out,
        seed=args.seed,
        max_patches=args.max_patches,
        hidden_size=args.hidden_size,
        vocab_size=args.vocab_size,
        corpus=corpus,
    )
    print(f"Saved a tiny random ChartWiz ({model.num_parameters():,} parameters) to {args.out}")


def register(subcommands) -> None:
    parser = subcommands.add_parser("init-tiny", help="save a tiny random ChartWiz, made offline in seconds")
    parser.add_argument("out", help="output directory (new or empty, unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-patches", type=int, default=64, help="patches (= image tokens) per chart")
    parser.add_argument(
        "--hidden-size", type=int, default=64, help="width of the language model, a multiple of 32 (encoder: half)"
    )
    parser.add_argument(
        "--corpus", default=None, help="a `chartwiz data build` folder whose train texts the tokenizer learns"
    )
    parser.add_argument("--vocab-size", type=int, default=600, help="tokenizer size")
    parser.add_argument("--overwrite", action="store_true", help="write into OUT even if it is not empty")
    parser.set_defaults(func=run, prog=parser.prog)
