"""`chartwiz convert`: turn a checkpoint of the original ChartWiz (LLaVA fork format) into a ChartWiz checkpoint."""

NAME = "convert"
HELP = "convert a checkpoint of the original ChartWiz (LLaVA fork format) to a ChartWiz checkpoint"


def register(subcommands) -> None:
    from chartwiz_hf.convert_chartwiz_llava_to_hf import add_convert_arguments, convert_from_args

    parser = subcommands.add_parser(
        NAME,
        help=HELP,
        description=(
            "Converts a checkpoint of the original ChartWiz (the LLaVA fork: a full model, a stage-1 mm_projector.bin "
            "or a LoRA run) into a ChartWiz checkpoint that loads with the Auto classes.\n"
            "원본 ChartWiz(LLaVA 포크)의 전체 모델, 1단계 mm_projector.bin, LoRA 어댑터를 "
            "ChartWiz 체크포인트로 변환합니다."
        ),
    )
    # The converter's own argparse options, defined once in the model package for this command and for
    # `python -m chartwiz_hf.convert_chartwiz_llava_to_hf`: not a dataclass, so this command gets the namespace.
    add_convert_arguments(parser)
    parser.set_defaults(func=convert_from_args)
