"""The `chartwiz` command line; each sub-command lives in `chartwiz_hf/commands/`."""

import argparse
import logging
import sys

from dataset_builder.cli import add_data_commands

from .commands import ask, compose, convert, demo, evaluate, infer, init_tiny, merge
from .extras import OPTIONAL_MODULES, MissingExtraError, missing_extra_message


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
    except (ValueError, OSError, MissingExtraError) as error:
        # The sub-command's own name (`chartwiz data build`), so the user knows which step failed.
        print(f"{args.prog}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        # An optional package imported by a module of the command (the chart of evaluation's report): the
        # extra to install, in one line. A core package missing is a broken install and keeps its traceback.
        if (error.name or "").split(".")[0] not in OPTIONAL_MODULES:
            raise
        message = missing_extra_message(error.name, "this command")
        print(f"{args.prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how a user stops a long job: one line saying what was kept, not a traceback.
        hint = getattr(args, "interrupt_hint", None)
        print(f"\n{args.prog}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
