"""
`chartwiz data build` and `chartwiz synth`: their options, as dataclasses that the `chartwiz` parser
(`chartwiz.commands.parser.CommandParser`, transformers' `HfArgumentParser`) turns into options; this module imports
neither, so that the data layer loads without torch or transformers.
"""

import argparse
import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from chartwiz.extras import require
from chartwiz.names import BUILT_CONFIGS, DATASET_CONFIGS


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1, so a bad count stops the command before any work."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclass(kw_only=True)
class BuildArguments:
    data_dir: str = field(metadata={"help": "the AI-Hub tree holding train/ and test/"})
    gpt: list[str] = field(
        default_factory=list, metadata={"help": "GPT conversation files or folders (JSON / JSONL)", "nargs": "*"}
    )
    out: str = field(metadata={"help": "output directory"})
    configs: list[str] = field(
        default_factory=lambda: list(BUILT_CONFIGS),
        metadata={
            "help": "the configs to build; all is finetune + gpt, made from them (default: pretrain finetune gpt)",
            "choices": DATASET_CONFIGS,
        },
    )
    num_proc: Optional[int] = field(
        default=None, metadata={"help": "processes per config (default: one)", "type": positive_int}
    )
    push_to_hub: Optional[str] = field(
        default=None, metadata={"help": "also upload to this Hub dataset repo", "metavar": "REPO"}
    )
    private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    max_shard_size: Optional[str] = field(
        default=None,
        metadata={"help": "largest Parquet shard pushed to the Hub, e.g. 500MB (default: datasets' own)"},
    )


@dataclass(kw_only=True)
class SynthArguments:
    out: str = field(metadata={"help": "output directory", "positional": True})
    n: int = field(metadata={"help": "number of charts (from 2 on, both splits get charts)"})
    seed: int = field(default=0, metadata={"help": "the same seed writes the same charts"})
    test_fraction: float = field(default=0.1, metadata={"help": "share of test charts, 0 to 0.5"})
    num_proc: int = field(default=1, metadata={"help": "rendering processes", "type": positive_int})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier synth output in OUT"})


def _same_named(arguments, function) -> dict:
    """
    The fields of `arguments` that `function` takes by the same name, as `chartwiz.commands.parser.same_named` (which
    the data layer does not import: it would load transformers).
    """
    parameters = inspect.signature(function).parameters
    return {name: value for name, value in asdict(arguments).items() if name in parameters}


def _build(args: BuildArguments):
    from .build import build_dataset

    report = build_dataset(output_dir=args.out, gpt_sources=args.gpt, **_same_named(args, build_dataset))
    summary = {
        config: {split: {k: v for k, v in counts.items() if k != "files"} for split, counts in by_split.items()}
        for config, by_split in report["counts"].items()
    }
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    for warning in report.get("warnings", []):
        print(f"warning: {warning['message']}")
    # An entry may stand for several records (a chart that does not parse skips its three finetune rows).
    records = sum(entry.get("records", 1) for entry in report["skipped"])
    print(
        f"{records} skipped records are listed with their reasons in {args.out}/build_report.json "
        f"({len(report['skipped'])} entries)"
    )


def _synth(args: SynthArguments):
    from .synth import generate

    # Before any chart is drawn: the core install has no matplotlib (it is `[train]`, synthetic training data).
    require("matplotlib", "chartwiz synth", extra="train")
    generate(args.out, **_same_named(args, generate))
    print(f"Wrote {args.n} synthetic charts to {args.out} (GPT conversations in {args.out}/gpt_qa.jsonl)")


def add_data_commands(commands) -> None:
    """
    Adds `data build` and `synth` to `commands`, the sub-commands of the `chartwiz` parser, whose parsers make each
    command's options out of its dataclass (`dataclass_types`).
    """
    data = commands.add_parser(
        "data",
        help="dataset commands",
        description="Dataset commands: `chartwiz data build`.\n데이터셋 명령입니다: `chartwiz data build`.",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    build = data_commands.add_parser(
        "build",
        dataclass_types=[BuildArguments],
        help="AI-Hub tree -> Parquet datasets (pretrain, finetune, gpt, all)",
        description=(
            "Turns an AI-Hub chart tree and GPT conversation files into the pretrain, finetune, gpt and all Parquet "
            "datasets, with a dataset card and build_report.json (the skipped records and why).\n"
            "AI-Hub 차트 데이터로 pretrain, finetune, gpt, all 구성의 Parquet 데이터셋과 데이터셋 카드, 건너뛴 레코드 "
            "보고서를 만듭니다."
        ),
    )
    build.set_defaults(
        func=_build,
        interrupt_hint="the output folder keeps its previous build; run the same command again to build",
    )

    synth = commands.add_parser(
        "synth",
        dataclass_types=[SynthArguments],
        help="write synthetic AI-Hub charts (images, JSON, GPT QA)",
        description=(
            "Writes synthetic charts in the AI-Hub layout and schema (images, annotations, and a multi-turn GPT "
            "question file whose answers are computed from the data), to try every command without AI-Hub data.\n"
            "AI-Hub와 같은 형식의 합성 차트(이미지, 주석, 다중 턴 질의응답 파일)를 만듭니다."
        ),
    )
    synth.set_defaults(func=_synth)
