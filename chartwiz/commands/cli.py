"""The `chartwiz` command line; each sub-command lives in `chartwiz/commands/`."""

import argparse
import logging
import os
import sys
import traceback

from chartwiz.errors import ChartWizError
from chartwiz.extras import OPTIONAL_MODULES, missing_extra_message
from dataset_builder.cli import add_data_commands

from . import ask, compose, convert, demo, evaluate, infer, init_tiny, merge


COMMANDS = (compose, init_tiny, ask, infer, demo, evaluate, merge, convert)
DEBUG_VARIABLE = "CHARTWIZ_DEBUG"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """
    argparse's help with each option's default (`ArgumentDefaultsHelpFormatter`; `none` for an option unset unless
    given, `off` for a flag), unless the help already says what the default is in words, required options marked so,
    and each line of the description (English, then Korean) wrapped on its own.
    """

    def _fill_text(self, text, width, indent):
        return "\n".join(super(HelpFormatter, self)._fill_text(line, width, indent) for line in text.splitlines())

    def _get_help_string(self, action):
        text = action.help or ""
        said = "(default" in text or "default:" in text
        if not action.option_strings or said or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None or action.default == []:
            return f"{text} (default: none)"
        if action.nargs == 0 and action.default is False:  # a flag
            return f"{text} (default: off)"
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """
    The parser of `chartwiz` and of each of its sub-commands (argparse makes the sub-commands' parsers of the
    parent's class): options shown with their defaults, and `--debug` on every command.
    """

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        # SUPPRESS: a sub-command without the flag leaves the top-level `chartwiz --debug` as it was.
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"show the traceback of an error too, not only its one line (default: off, or {DEBUG_VARIABLE}=1)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="chartwiz",
        description="Korean chart question answering (ChartWiz).\n한국어 차트 질의응답 모델 ChartWiz의 명령입니다.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subcommands)
    add_data_commands(subcommands)
    return parser


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
        args = build_parser().parse_args(argv)
        args.func(args)
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
