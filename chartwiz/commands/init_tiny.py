"""`chartwiz init-tiny`: a tiny random ChartWiz, made offline in seconds."""

from chartwiz.files import OVERWRITE_HELP, replacing_folder


def run(args):
    from chartwiz.models.tiny import dataset_corpus

    with replacing_folder(args.out, args.overwrite, inputs=(args.corpus,) if args.corpus else ()):
        corpus = list(dataset_corpus(args.corpus)) if args.corpus else None
        message = _save(args, corpus)
    print(message)


def _save(args, corpus) -> str:
    from chartwiz.models.tiny import make_tiny_chartwiz, make_tiny_language_model

    if args.language_model_only:
        model, _ = make_tiny_language_model(
            args.out, seed=args.seed, hidden_size=args.hidden_size, vocab_size=args.vocab_size, corpus=corpus
        )
        return (
            f"Saved a tiny random language model ({model.num_parameters():,} parameters) and its tokenizer to "
            f"{args.out}; join it with an encoder: chartwiz compose --vision DIR --text {args.out} --out MODEL"
        )
    model, _ = make_tiny_chartwiz(
        args.out,
        seed=args.seed,
        max_patches=args.max_patches,
        hidden_size=args.hidden_size,
        vocab_size=args.vocab_size,
        corpus=corpus,
    )
    return f"Saved a tiny random ChartWiz ({model.num_parameters():,} parameters) to {args.out}"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "init-tiny",
        help="save a tiny random ChartWiz, made offline in seconds",
        description=(
            "Saves a tiny random ChartWiz (or its language model alone), made offline in seconds, for tests and for "
            "trying the commands.\n"
            "테스트와 명령 시험용으로 작은 무작위 ChartWiz를 몇 초 만에 오프라인으로 만듭니다."
        ),
    )
    parser.add_argument("out", help="output directory (new or empty, unless --overwrite)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights: the same seed, the same model"
    )
    parser.add_argument("--max-patches", type=int, default=64, help="patches (= image tokens) per chart")
    parser.add_argument(
        "--hidden-size", type=int, default=64, help="width of the language model, a multiple of 32 (encoder: half)"
    )
    parser.add_argument(
        "--corpus", default=None, help="a `chartwiz data build` folder whose train texts the tokenizer learns"
    )
    parser.add_argument("--vocab-size", type=int, default=600, help="tokenizer size")
    parser.add_argument(
        "--language-model-only",
        action="store_true",
        help="save only the language model (heads of 32) and its tokenizer, a --text for `chartwiz compose`",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run, prog=parser.prog)
