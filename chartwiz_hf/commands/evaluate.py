"""`chartwiz evaluate`: answer a built dataset's split and score it, or score a predictions file."""

from ..errors import ChartWizValueError
from ..names import DATASET_CONFIGS as CONFIGS
from .infer import add_engine_arguments


# Spelt out here (a test checks it matches metrics.DEFAULT_BLEU_TOKENIZE) so that building the parser does not import
# the metric libraries for every other sub-command.
DEFAULT_BLEU_TOKENIZE = "intl"


def run(args):
    from ..evaluation import evaluate_model, score_run

    if args.predictions is not None:
        flags = (
            ("--adapter", args.adapter),
            ("--blank-images", args.blank_images),
            ("--shuffle-images", args.shuffle_images),
            ("--restart", args.restart),
        )
        given = [flag for flag, value in flags if value]
        if given:
            raise ChartWizValueError(f"--predictions scores an existing file: {', '.join(given)} cannot go with it.")
        split = {"dataset": args.dataset, "config": args.config, "split": args.split} if args.dataset else {}
        metrics = score_run(args.out, predictions_path=args.predictions, bleu_tokenize=args.bleu_tokenize, **split)
    else:
        if args.dataset is None:
            raise ChartWizValueError(
                f"--model needs --dataset DIR, a dataset built by `chartwiz data build` ({'/'.join(CONFIGS)})."
            )
        metrics = evaluate_model(
            args.model,
            args.dataset,
            args.out,
            config=args.config,
            split=args.split,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            adapter=args.adapter,
            device=args.device,
            bleu_tokenize=args.bleu_tokenize,
            blank_images=args.blank_images,
            shuffled_images=args.shuffle_images,
            restart=args.restart,
            engine=args.engine,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
        )
    for task, scores in metrics["by_task"].items():
        figures = "  ".join(f"{name} {value:.1f}" for name, value in scores.items() if name != "n")
        print(f"{task:<12} n={scores['n']:<6} {figures}")
    for ids, what in (
        (metrics.get("unknown_ids"), f"predictions of ids that {metrics.get('checked_against')} does not have"),
        (metrics.get("missing_ids"), f"rows of {metrics.get('checked_against')} without a prediction"),
    ):
        if ids:
            more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
            print(f"{len(ids)} {what}: {', '.join(map(str, ids[:10]))}{more}")
    if args.predictions is not None and not metrics.get("checked_against"):
        print(
            "note: no split to check the predictions' ids against (their run's settings file is not beside them): "
            "give --dataset DIR --config --split to have the ids the split lacks, and its rows without a "
            "prediction, reported"
        )
    if metrics["skipped"]:
        print(f"{len(metrics['skipped'])} rows skipped, listed with their reasons in the report")
    print(f"Wrote metrics.json, report.md, report.png and predictions.jsonl to {args.out}")
    if not metrics["n"]:
        raise ChartWizValueError(
            f"no row was scored: all {len(metrics['skipped'])} were skipped, listed with their reasons in "
            f"{args.out}/report.md"
        )


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "evaluate",
        help="answer a dataset split and score it (or score a predictions file): metrics.json, report.md, report.png",
        description=(
            "Answers every row of a split of a `chartwiz data build` dataset and scores the answers by task and "
            "chart type (or scores a predictions file): metrics.json, report.md and report.png in --out. Rerunning "
            "resumes.\n"
            "데이터셋 분할의 모든 질문에 답하고 작업별·차트 유형별로 점수를 매겨 보고서를 만듭니다."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="ChartWiz checkpoint directory or Hub repo to generate with")
    source.add_argument("--predictions", help="JSON Lines file to score (id, task, chart_type, prediction, reference)")
    parser.add_argument("--out", required=True, help="report folder; running again into it resumes generation")
    parser.add_argument(
        "--dataset",
        help="dataset built by `chartwiz data build` (folder or Hub repo); with --predictions, the split to check "
        "the predictions' ids against (default: the one their run answered)",
    )
    parser.add_argument(
        "--config",
        default="finetune",
        choices=CONFIGS,
        help="dataset config (default: finetune; `chartwiz infer` defaults to gpt)",
    )
    parser.add_argument("--split", default="test", help="dataset split")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N rows of the split")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="questions generated together (default 8); --engine vllm: requests in flight (default 256)",
    )
    add_engine_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply, unmerged")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: where the model loads)")
    ablation = parser.add_mutually_exclusive_group()
    ablation.add_argument(
        "--blank-images",
        action="store_true",
        help="image ablation: show the model a white image of each chart's size instead of the chart",
    )
    ablation.add_argument(
        "--shuffle-images",
        action="store_true",
        help="image ablation: show each row the chart of another row of the split (a seeded cycle of the charts)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="start over in --out instead of resuming the run it holds"
    )
    parser.add_argument(
        "--bleu-tokenize",
        default=DEFAULT_BLEU_TOKENIZE,
        help="sacrebleu tokenizer for BLEU: intl (default), 13a, char, or ko-mecab with `pip install sacrebleu[ko]`",
    )
    parser.set_defaults(
        func=run,
        prog=parser.prog,
        interrupt_hint="the answers so far are saved: run the same command again to continue where it stopped",
    )
