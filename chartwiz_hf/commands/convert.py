"""`chartwiz convert`: turn a checkpoint of the original ChartWiz (LLaVA fork format) into a ChartWiz checkpoint."""

from ..convert_chartwiz_llava_to_hf import add_convert_arguments, convert_from_args


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "convert", help="convert a checkpoint of the original ChartWiz (LLaVA fork format) to a ChartWiz checkpoint"
    )
    add_convert_arguments(parser)
    parser.set_defaults(func=convert_from_args, prog=parser.prog)
