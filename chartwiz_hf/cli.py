"""The `chartwiz` command line; each sub-command lives in `chartwiz_hf/commands/`."""

import argparse
import logging
import sys

from dataset_builder.cli import add_data_commands

from .commands import ask, compose, convert, demo, evaluate, infer, init_tiny, merge


COMMANDS = (compose, init_tiny, ask, infer, demo, evaluate, merge, convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chartwiz", description="Korean chart question answering (ChartWiz).")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subcommands)
    add_data_commands(subcommands)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as error:
        # The sub-command's own name (`chartwiz data build`), so the user knows which step failed.
        print(f"{args.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how a user stops a long job: one line saying what was kept, not a traceback.
        hint = getattr(args, "interrupt_hint", None)
        print(f"\n{args.prog}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
