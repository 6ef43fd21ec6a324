"""`chartwiz init-tiny`: a tiny random ChartWiz, made offline in seconds."""

from dataclasses import dataclass, field
from typing import Optional

from chartwiz.files import OVERWRITE_HELP, replacing_folder


@dataclass(kw_only=True)
class InitTinyArguments:
    out: str = field(metadata={"help": "output directory (new or empty, unless --overwrite)", "positional": True})
    seed: int = field(default=0, metadata={"help": "seed of the random weights: the same seed, the same model"})
    max_patches: int = field(default=64, metadata={"help": "patches (= image tokens) per chart"})
    hidden_size: int = field(
        default=64, metadata={"help": "width of the language model, a multiple of 32 (encoder: half)"}
    )
    corpus: Optional[str] = field(
        default=None, metadata={"help": "a `chartwiz data build` folder whose train texts the tokenizer learns"}
    )
    vocab_size: int = field(default=600, metadata={"help": "tokenizer size"})
    language_model_only: bool = field(
        default=False,
        metadata={
            "help": "save only the language model (heads of 32) and its tokenizer, a --text for `chartwiz compose`"
        },
    )
    like: Optional[str] = field(
        default=None,
        metadata={
            "help": "with --language-model-only: a saved tiny language model whose shape and tokenizer the new "
            "weights take (its weights are not read)"
        },
    )
    initializer_range: Optional[float] = field(
        default=None,
        metadata={"help": "with --language-model-only: standard deviation of the new weights (none: Llama's 0.02)"},
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


def run(args: InitTinyArguments):
    from chartwiz.errors import ChartWizValueError
    from chartwiz.models.tiny import dataset_corpus

    if not args.language_model_only and (args.like or args.initializer_range is not None):
        raise ChartWizValueError(
            "--like and --initializer-range make a language model alone: add --language-model-only."
        )
    if args.like and args.corpus:
        raise ChartWizValueError("--like takes the tokenizer of that language model; --corpus would train another.")
    inputs = tuple(folder for folder in (args.corpus, args.like) if folder)
    with replacing_folder(args.out, args.overwrite, inputs=inputs):
        corpus = list(dataset_corpus(args.corpus)) if args.corpus else None
        message = _save(args, corpus)
    print(message)


def _save(args: InitTinyArguments, corpus) -> str:
    # The options passed one by one, not by `same_named`: the functions' `corpus` is the texts of the --corpus folder.
    from chartwiz.models.tiny import make_language_model_like, make_tiny_chartwiz, make_tiny_language_model

    # Given only when asked for: otherwise the functions' own default (Llama's) holds.
    initialization = {} if args.initializer_range is None else {"initializer_range": args.initializer_range}
    if args.like:
        model, _ = make_language_model_like(args.like, args.out, seed=args.seed, **initialization)
        return (
            f"Saved a language model of {args.like}'s shape and tokenizer with new weights (std "
            f"{model.config.initializer_range:g}, seed {args.seed}; {model.num_parameters():,} parameters) to "
            f"{args.out}"
        )
    if args.language_model_only:
        model, _ = make_tiny_language_model(
            args.out,
            seed=args.seed,
            hidden_size=args.hidden_size,
            vocab_size=args.vocab_size,
            corpus=corpus,
            **initialization,
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


NAME = "init-tiny"
HELP = "save a tiny random ChartWiz, made offline in seconds"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[InitTinyArguments],
        help=HELP,
        description=(
            "Saves a tiny random ChartWiz (or its language model alone), made offline in seconds, for tests and for "
            "trying the commands.\n"
            "테스트와 명령 시험용으로 작은 무작위 ChartWiz를 몇 초 만에 오프라인으로 만듭니다."
        ),
    )
    parser.set_defaults(func=run)
