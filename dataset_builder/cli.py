"""`chartwiz data build` and `chartwiz synth`."""

import argparse
import json

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


def _build(args):
    from .build import build_dataset

    report = build_dataset(
        args.data_dir,
        args.out,
        gpt_sources=args.gpt,
        configs=args.configs,
        num_proc=args.num_proc,
        push_to_hub=args.push_to_hub,
        private=args.private,
        max_shard_size=args.max_shard_size,
    )
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


def _synth(args):
    from .synth import generate

    # Before any chart is drawn: the core install has no matplotlib (it is `[train]`, synthetic training data).
    require("matplotlib", "chartwiz synth", extra="train")
    generate(
        args.out,
        args.n,
        seed=args.seed,
        test_fraction=args.test_fraction,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
    )
    print(f"Wrote {args.n} synthetic charts to {args.out} (GPT conversations in {args.out}/gpt_qa.jsonl)")


def add_data_commands(commands) -> None:
    """Adds `data build` and `synth` to the `chartwiz` sub-command parser."""
    data = commands.add_parser(
        "data",
        help="dataset commands",
        description="Dataset commands: `chartwiz data build`.\n데이터셋 명령입니다: `chartwiz data build`.",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    build = data_commands.add_parser(
        "build",
        help="AI-Hub tree -> Parquet datasets (pretrain, finetune, gpt, all)",
        description=(
            "Turns an AI-Hub chart tree and GPT conversation files into the pretrain, finetune, gpt and all Parquet "
            "datasets, with a dataset card and build_report.json (the skipped records and why).\n"
            "AI-Hub 차트 데이터로 pretrain, finetune, gpt, all 구성의 Parquet 데이터셋과 데이터셋 카드, 건너뛴 레코드 "
            "보고서를 만듭니다."
        ),
    )
    build.add_argument("--data-dir", required=True, help="the AI-Hub tree holding train/ and test/")
    build.add_argument("--gpt", nargs="*", default=[], help="GPT conversation files or folders (JSON / JSONL)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument(
        "--configs",
        nargs="+",
        default=list(BUILT_CONFIGS),
        choices=DATASET_CONFIGS,
        help="the configs to build; all is finetune + gpt, made from them (default: pretrain finetune gpt)",
    )
    build.add_argument("--num-proc", type=positive_int, default=None, help="processes per config (default: one)")
    build.add_argument("--push-to-hub", metavar="REPO", default=None, help="also upload to this Hub dataset repo")
    build.add_argument("--private", action="store_true", help="create the Hub repo as private")
    build.add_argument(
        "--max-shard-size",
        default=None,
        help="largest Parquet shard pushed to the Hub, e.g. 500MB (default: datasets' own)",
    )
    build.set_defaults(
        func=_build,
        prog=build.prog,
        interrupt_hint="the output folder keeps its previous build; run the same command again to build",
    )

    synth = commands.add_parser(
        "synth",
        help="write synthetic AI-Hub charts (images, JSON, GPT QA)",
        description=(
            "Writes synthetic charts in the AI-Hub layout and schema (images, annotations, and a multi-turn GPT "
            "question file whose answers are computed from the data), to try every command without AI-Hub data.\n"
            "AI-Hub와 같은 형식의 합성 차트(이미지, 주석, 다중 턴 질의응답 파일)를 만듭니다."
        ),
    )
    synth.add_argument("out", help="output directory")
    synth.add_argument("--n", type=int, required=True, help="number of charts (from 2 on, both splits get charts)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed writes the same charts")
    synth.add_argument("--test-fraction", type=float, default=0.1, help="share of test charts, 0 to 0.5")
    synth.add_argument("--num-proc", type=positive_int, default=1, help="rendering processes")
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier synth output in OUT")
    synth.set_defaults(func=_synth, prog=synth.prog)
