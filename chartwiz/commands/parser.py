"""
The parser of `chartwiz` and its sub-commands: transformers' `HfArgumentParser`, each command's options the fields of
a dataclass (help, default, choices in the field), spelt and parsed as the command line always has been.
"""

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable

from transformers import HfArgumentParser


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


@dataclasses.dataclass(frozen=True, eq=False)
class Exclusive:
    """
    Options that cannot go together (argparse's mutually exclusive group), named by the same `Exclusive` in the
    `exclusive` metadata of their fields; `required`: one of them must be given.
    """

    required: bool = False


def option_string(name: str) -> str:
    """The option of the field `name`: `--max-new-tokens` for `max_new_tokens`."""
    return f"--{name.replace('_', '-')}"


def _value_type(annotation):
    """`int` for `Optional[int]`: argparse converts the text given, `None` is the default."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(argument for argument in typing.get_args(annotation) if argument is not type(None))
    return annotation


class CommandParser(HfArgumentParser):
    """
    The parser of `chartwiz` and of each of its sub-commands (argparse makes the sub-commands' parsers of the
    parent's class, `add_parser(name, dataclass_types=[...])` giving a command its options, as TRL's CLI does):
    options shown with their defaults, and `--debug` on every command.
    """

    def __init__(self, dataclass_types=None, formatter_class=HelpFormatter, **kwargs):
        self._exclusive_groups = {}
        super().__init__(dataclass_types, formatter_class=formatter_class, **kwargs)
        # SUPPRESS: a sub-command without the flag leaves the top-level `chartwiz --debug` as it was.
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"show the traceback of an error too, not only its one line (default: off, or {DEBUG_VARIABLE}=1)",
        )
        # The parsed namespace names its command: errors say which failed, `command_arguments` reads its dataclasses.
        self.set_defaults(prog=self.prog, command_parser=self)

    def _parse_dataclass_field(self, parser, field: dataclasses.Field) -> None:
        """
        A field as the option the command line has always had, where `HfArgumentParser` differs: spelt with dashes
        only (`--max-new-tokens`; transformers adds `--max_new_tokens`, and its errors name both), and a `bool` a flag
        that takes no value (transformers' `--overwrite [OVERWRITE]` takes the next word: `chartwiz init-tiny
        --overwrite OUT` would fail on `OUT`). The metadata holds what argparse takes (`help`, `choices`, `metavar`,
        `nargs`, `type`, `aliases`), `positional: True` for an argument without dashes (`chartwiz ask IMAGE QUESTION`)
        and `exclusive`, the `Exclusive` of options that cannot go together. (transformers' method is static; this one
        keeps the parser's groups.)
        """
        kwargs = dict(field.metadata)
        exclusive = kwargs.pop("exclusive", None)
        if kwargs.pop("positional", False):
            names = [field.name]
        else:
            names = [option_string(field.name), *kwargs.pop("aliases", [])]
            kwargs["required"] = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        value_type = _value_type(field.type)
        if value_type is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(value_type) is list:
            kwargs.setdefault("nargs", "+")
            kwargs.setdefault("type", typing.get_args(value_type)[0])
        else:
            kwargs.setdefault("type", value_type)
        if exclusive is not None:
            if exclusive not in self._exclusive_groups:
                self._exclusive_groups[exclusive] = parser.add_mutually_exclusive_group(required=exclusive.required)
            parser = self._exclusive_groups[exclusive]
        parser.add_argument(*names, **kwargs)


def command_arguments(namespace: argparse.Namespace) -> tuple:
    """
    The dataclasses of the command `namespace` was parsed for, filled from it; the namespace itself for a command whose
    options are not a dataclass (`convert`: the converter's own argparse options).
    """
    parser = namespace.command_parser
    return parser.parse_dict(vars(namespace), allow_extra_keys=True) if parser.dataclass_types else (namespace,)


def same_named(arguments, function: Callable) -> dict:
    """The fields of the dataclass `arguments` that `function` takes by the same name, as its keyword arguments."""
    parameters = inspect.signature(function).parameters
    return {name: value for name, value in dataclasses.asdict(arguments).items() if name in parameters}
