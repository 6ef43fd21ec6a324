"""The `chartwiz` command line; each sub-command lives in `chartwiz/commands/`."""

import argparse
import logging
import os
import sys
import traceback
from typing import Optional

from chartwiz.errors import ChartWizError
from chartwiz.extras import OPTIONAL_MODULES, missing_extra_message
from dataset_builder.cli import add_data_commands

from . import ask, compose, convert, demo, evaluate, infer, init_tiny, merge
from .parser import DEBUG_VARIABLE, CommandParser, command_arguments


COMMANDS = (compose, init_tiny, ask, infer, demo, evaluate, merge, convert)


def build_parser(command: Optional[str] = None) -> CommandParser:
    """
    The `chartwiz` parser. Given the `command` being run, only its options are built and the other commands are
    named with their help: building a command's options can import what it runs (`convert`'s are the converter's,
    which loads torch), and `chartwiz synth` or `chartwiz data build` should not pay for a model stack they never use.
    """
    parser = CommandParser(
        prog="chartwiz",
        description="Korean chart question answering (ChartWiz).\n한국어 차트 질의응답 모델 ChartWiz의 명령입니다.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        if command in (None, module.NAME):
            module.register(subcommands)
        else:
            subcommands.add_parser(module.NAME, help=module.HELP)
    add_data_commands(subcommands)
    return parser


def command_of(argv: list[str]) -> Optional[str]:
    """The command `argv` runs: its first word, where that is not an option of `chartwiz` itself (`--help`)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def debugging(args) -> bool:
    """Whether `--debug` or `CHARTWIZ_DEBUG` (anything but empty, 0, false or no) asks for tracebacks."""
    setting = os.environ.get(DEBUG_VARIABLE, "").strip().lower()
    return getattr(args, "debug", False) or setting not in ("", "0", "false", "no")


def _user_error(args, message) -> int:
    if debugging(args):
        traceback.print_exc()
    # The sub-command's own name (`chartwiz data build`), so the user knows which step failed.
    print(f"{getattr(args, 'prog', 'chartwiz')}: error: {message}", file=sys.stderr)
    return 2


def _interrupted(args) -> int:
    # Ctrl-C is how a user stops a long job: one line saying what was kept, not a traceback.
    hint = getattr(args, "interrupt_hint", None)
    print(f"\n{getattr(args, 'prog', 'chartwiz')}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return 130


def main(argv=None) -> int:
    """
    Runs a `chartwiz` command. What the user gave wrong (a `ChartWizError`, or a path the system refuses: missing,
    not readable) is one line and exit status 2; anything else is a defect and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = argparse.Namespace()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(command_of(argv)).parse_args(argv)
        args.func(*command_arguments(args))
    except ChartWizError as error:
        return _user_error(args, error)
    except OSError as error:
        # The system's own refusal of a path the user named (permission denied, not a directory...): it says which.
        if error.filename is None:
            raise
        return _user_error(args, error)
    except ModuleNotFoundError as error:
        # An optional package imported by a module of the command (the chart of evaluation's report): the
        # extra to install, in one line. A core package missing is a broken install and keeps its traceback.
        if (error.name or "").split(".")[0] not in OPTIONAL_MODULES:
            raise
        return _user_error(args, missing_extra_message(error.name, "this command"))
    except KeyboardInterrupt:
        return _interrupted(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
