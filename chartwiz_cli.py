"""
The `chartwiz` command's entry point, outside the packages on purpose: importing the command line first imports
torch, transformers and datasets, seconds in which Ctrl-C would otherwise end the command with a traceback of the
import machinery. Here it ends with one line, as Ctrl-C during the command's work does (`chartwiz.commands.cli`).
"""

import sys


def command_name(argv: list[str]) -> str:
    """`chartwiz infer` or `chartwiz data build`, from the command line's leading words, as the parser names it."""
    words = []
    for word in argv:
        if word.startswith("-") or len(words) == (2 if words[:1] == ["data"] else 1):
            break
        words.append(word)
    return " ".join(["chartwiz", *words])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        from chartwiz.commands.cli import main as run_command
    except KeyboardInterrupt:
        print(f"\n{command_name(argv)}: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
