"""`chartwiz merge`: fold a LoRA adapter into its ChartWiz base and save a full checkpoint."""

from dataclasses import dataclass, field

from chartwiz.files import OVERWRITE_HELP, replacing_folder


@dataclass(kw_only=True)
class MergeArguments:
    base: str = field(metadata={"help": "the ChartWiz checkpoint the adapter was trained on"})
    adapter: str = field(metadata={"help": "the adapter folder (recipes' LoRA output) or Hub repo"})
    out: str = field(metadata={"help": "output directory of the merged checkpoint (new or empty, unless --overwrite)"})
    dtype: str = field(
        default="auto",
        metadata={"help": "dtype to merge and save in", "choices": ["auto", "float32", "bfloat16", "float16"]},
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})
    no_base_check: bool = field(
        default=False, metadata={"help": "merge onto --base even if it is not the model the adapter was trained on"}
    )


def run(args: MergeArguments):
    from chartwiz.models.merge import merge_adapter

    with replacing_folder(args.out, args.overwrite, inputs=(args.base, args.adapter)):
        merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype, check_base_model=not args.no_base_check)
    print(f"Saved {args.base} + {args.adapter}, merged, to {args.out}")


NAME = "merge"
HELP = "fold a LoRA adapter into its base and save a full checkpoint"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[MergeArguments],
        help=HELP,
        description=(
            "Folds a LoRA adapter (and the modules it saved in full, such as the projector) into the ChartWiz "
            "checkpoint it was trained on, and saves a full checkpoint.\n"
            "LoRA 어댑터를 학습에 쓴 기반 모델에 병합해 전체 체크포인트로 저장합니다."
        ),
    )
    parser.set_defaults(func=run)
