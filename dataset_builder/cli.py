"""`chartwiz data build` and `chartwiz synth`."""

import argparse
import json

from chartwiz_hf.extras import require
from chartwiz_hf.names import BUILT_CONFIGS, DATASET_CONFIGS


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
    data = commands.add_parser("data", help="dataset commands")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser("build", help="AI-Hub tree -> Parquet datasets (pretrain, finetune, gpt, all)")
    build.add_argument("--data-dir", required=True, help="the AI-Hub tree holding train/ and test/")
    build.add_argument("--gpt", nargs="*", default=[], help="GPT conversation files or folders (JSON / JSONL)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--configs", nargs="+", default=list(BUILT_CONFIGS), choices=DATASET_CONFIGS)
    build.add_argument("--num-proc", type=positive_int, default=None, help="processes per config")
    build.add_argument("--push-to-hub", metavar="REPO", default=None, help="also upload to this Hub dataset repo")
    build.add_argument("--private", action="store_true", help="create the Hub repo as private")
    build.add_argument(
        "--max-shard-size",
        default=None,
        help="largest Parquet shard pushed to the Hub, e.g. 500MB (datasets' default)",
    )
    build.set_defaults(
        func=_build,
        prog=build.prog,
        interrupt_hint="the output folder keeps its previous build; run the same command again to build",
    )

    synth = commands.add_parser("synth", help="write synthetic AI-Hub charts (images, JSON, GPT QA)")
    synth.add_argument("out", help="output directory")
    synth.add_argument("--n", type=int, required=True, help="number of charts (from 2 on, both splits get charts)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.1, help="share of test charts, 0 to 0.5")
    synth.add_argument("--num-proc", type=positive_int, default=1)
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier synth output in OUT")
    synth.set_defaults(func=_synth, prog=synth.prog)
