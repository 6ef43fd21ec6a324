"""`chartwiz merge`: fold a LoRA adapter into its ChartWiz base and save a full checkpoint."""

from chartwiz.files import OVERWRITE_HELP, replacing_folder


def run(args):
    from chartwiz.models.merge import merge_adapter

    with replacing_folder(args.out, args.overwrite, inputs=(args.base, args.adapter)):
        merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype, check_base_model=not args.no_base_check)
    print(f"Saved {args.base} + {args.adapter}, merged, to {args.out}")


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "merge",
        help="fold a LoRA adapter into its base and save a full checkpoint",
        description=(
            "Folds a LoRA adapter (and the modules it saved in full, such as the projector) into the ChartWiz "
            "checkpoint it was trained on, and saves a full checkpoint.\n"
            "LoRA 어댑터를 학습에 쓴 기반 모델에 병합해 전체 체크포인트로 저장합니다."
        ),
    )
    parser.add_argument("--base", required=True, help="the ChartWiz checkpoint the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="the adapter folder (recipes' LoRA output) or Hub repo")
    parser.add_argument(
        "--out", required=True, help="output directory of the merged checkpoint (new or empty, unless --overwrite)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype to merge and save in",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--no-base-check",
        action="store_true",
        help="merge onto --base even if it is not the model the adapter was trained on",
    )
    parser.set_defaults(func=run, prog=parser.prog)
