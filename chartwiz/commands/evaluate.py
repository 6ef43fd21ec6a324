"""
`chartwiz evaluate`: answer a built dataset's split with ChartWiz or any other image-text-to-text model and score it,
score a predictions file, or compare report folders side by side.
"""

from chartwiz.errors import ChartWizValueError
from chartwiz.names import DATASET_CONFIGS as CONFIGS
from chartwiz.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT

from .infer import add_engine_arguments


# Spelt out here (tests check they match metrics.DEFAULT_BLEU_TOKENIZE, evaluation_instructions.PRESETS and
# serving.chat_engine.MODEL_IMPLS) so that building the parser imports neither the metric libraries nor vLLM for every
# other sub-command.
DEFAULT_BLEU_TOKENIZE = "intl"
INSTRUCTION_PRESETS = ("none", "formats")
VLLM_MODEL_IMPLS = ("auto", "vllm", "transformers")
# What only generation takes: refused beside --predictions and --compare.
GENERATION_FLAGS = (
    ("--dataset", "dataset"),
    ("--adapter", "adapter"),
    ("--blank-images", "blank_images"),
    ("--shuffle-images", "shuffle_images"),
    ("--restart", "restart"),
    ("--instructions", "instructions"),
    ("--trust-remote-code", "trust_remote_code"),
    ("--dtype", "dtype"),
    ("--vllm-model-impl", "vllm_model_impl"),
)


def _refuse_generation_flags(args, source: str, allowed: tuple = ()) -> None:
    given = [flag for flag, name in GENERATION_FLAGS if getattr(args, name) and flag not in allowed]
    if given:
        raise ChartWizValueError(f"{source}: {', '.join(given)} cannot go with it.")


def compare(args) -> None:
    from chartwiz.evaluation.comparison import COMPARISON_CHART, COMPARISON_FILE, by_task_table, compare_reports

    _refuse_generation_flags(args, "--compare reads existing report folders")
    runs = compare_reports(args.compare, args.out)
    print("\n".join(by_task_table(runs)))
    print(f"Wrote {COMPARISON_FILE} and {COMPARISON_CHART} to {args.out}")


def run(args):
    if args.compare is not None:
        return compare(args)

    from chartwiz.evaluation import evaluate_model, score_run

    if args.predictions is not None:
        # --dataset names the split the predictions' ids are checked against.
        _refuse_generation_flags(args, "--predictions scores an existing file", allowed=("--dataset",))
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
            dtype=args.dtype,
            instructions=args.instructions,
            trust_remote_code=args.trust_remote_code,
            vllm_model_impl=args.vllm_model_impl,
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
        help=(
            "answer a dataset split and score it (or score a predictions file): metrics.json, report.md, report.png; "
            "or compare report folders: comparison.md, comparison.png"
        ),
        description=(
            "Answers every row of a split of a `chartwiz data build` dataset with ChartWiz or any other "
            "image-text-to-text model and scores the answers by task and chart type (or scores a predictions file): "
            "metrics.json, report.md and report.png in --out; rerunning resumes. --compare puts earlier report "
            "folders side by side.\n"
            "데이터셋 분할의 모든 질문에 ChartWiz나 다른 이미지-텍스트 모델로 답하고 작업별·차트 유형별로 점수를 매겨 "
            "보고서를 만들거나, 여러 보고서를 나란히 비교합니다."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        help=(
            "checkpoint directory or Hub repo to generate with: ChartWiz, or any model that loads with "
            "AutoModelForImageTextToText and AutoProcessor (asked through its own chat template)"
        ),
    )
    source.add_argument("--predictions", help="JSON Lines file to score (id, task, chart_type, prediction, reference)")
    source.add_argument(
        "--compare",
        nargs="+",
        metavar="REPORT_DIR",
        help="report folders of earlier runs to put side by side (by task, by chart type, with their ablations)",
    )
    parser.add_argument(
        "--out", required=True, help="report folder; running again into it resumes generation (--compare: its output)"
    )
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
        help=(
            f"questions generated together (default {DEFAULT_BATCH_SIZE}); --engine vllm: requests in flight "
            f"(default {DEFAULT_MAX_IN_FLIGHT})"
        ),
    )
    add_engine_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply, unmerged")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: where the model loads)")
    parser.add_argument(
        "--instructions",
        default=None,
        metavar="PRESET_OR_FILE",
        help=(
            "words added to each question, for models never taught the answer formats: 'none' (default: the "
            "question as ChartWiz is asked it), 'formats' (the question, then the form the references take, in "
            'Korean), or a JSON file {"system": ..., "table": "{question} ...", "qa": ...}; recorded in '
            f"the run's settings (presets: {', '.join(INSTRUCTION_PRESETS)})"
        ),
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the code a checkpoint other than ChartWiz ships (its model or processor)",
    )
    parser.add_argument(
        "--vllm-model-impl",
        default=None,
        choices=VLLM_MODEL_IMPLS,
        help=(
            "--engine vllm, a model other than ChartWiz: vLLM's own implementation of its architecture (auto, the "
            "default, or vllm) or its transformers code run by vLLM (transformers)"
        ),
    )
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
