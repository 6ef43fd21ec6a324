"""
`chartwiz evaluate`: answer a built dataset's split with ChartWiz or any other image-text-to-text model and score it,
score a predictions file, or compare report folders side by side.
"""

from dataclasses import asdict, dataclass, field
from typing import Optional

from chartwiz.errors import ChartWizValueError
from chartwiz.names import DATASET_CONFIGS as CONFIGS
from chartwiz.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT

from .infer import EngineArguments
from .parser import Exclusive, option_string, same_named


# Spelt out here (tests check they match metrics.DEFAULT_BLEU_TOKENIZE, evaluation_instructions.PRESETS and
# serving.chat_engine.MODEL_IMPLS) so that building the parser imports neither the metric libraries nor vLLM for every
# other sub-command.
DEFAULT_BLEU_TOKENIZE = "intl"
INSTRUCTION_PRESETS = ("none", "formats")
VLLM_MODEL_IMPLS = ("auto", "vllm", "transformers")
# What only generation takes: refused beside --predictions and --compare.
GENERATION_ONLY = (
    "dataset",
    "adapter",
    "blank_images",
    "shuffle_images",
    "restart",
    "instructions",
    "trust_remote_code",
    "dtype",
    "vllm_model_impl",
)
# What the run scores: a model's answers, a predictions file, or earlier runs side by side.
SOURCE = Exclusive(required=True)
# An image ablation: one at a time.
ABLATION = Exclusive()


@dataclass(kw_only=True)
class EvaluateArguments:
    model: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "checkpoint directory or Hub repo to generate with: ChartWiz, or any model that loads with "
                "AutoModelForImageTextToText and AutoProcessor (asked through its own chat template)"
            ),
            "exclusive": SOURCE,
        },
    )
    predictions: Optional[str] = field(
        default=None,
        metadata={
            "help": "JSON Lines file to score (id, task, chart_type, prediction, reference)",
            "exclusive": SOURCE,
        },
    )
    compare: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": (
                "report folders of earlier runs to put side by side (by task, by chart type, with their ablations)"
            ),
            "metavar": "REPORT_DIR",
            "exclusive": SOURCE,
        },
    )
    out: str = field(
        metadata={"help": "report folder; running again into it resumes generation (--compare: its output)"}
    )
    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "dataset built by `chartwiz data build` (folder or Hub repo); with --predictions, the split to check "
                "the predictions' ids against (default: the one their run answered)"
            )
        },
    )
    config: str = field(
        default="finetune",
        metadata={"help": "dataset config (default: finetune; `chartwiz infer` defaults to gpt)", "choices": CONFIGS},
    )
    split: str = field(default="test", metadata={"help": "dataset split"})
    max_samples: Optional[int] = field(default=None, metadata={"help": "only the first N rows of the split"})
    batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": (
                f"questions generated together (default {DEFAULT_BATCH_SIZE}); --engine vllm: requests in flight "
                f"(default {DEFAULT_MAX_IN_FLIGHT})"
            )
        },
    )
    max_new_tokens: int = field(default=512, metadata={"help": "answer length limit"})
    adapter: Optional[str] = field(default=None, metadata={"help": "a PEFT (LoRA) adapter folder to apply, unmerged"})
    device: Optional[str] = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1... (default: where the model loads)"}
    )
    instructions: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "words added to each question, for models never taught the answer formats: 'none' (default: the "
                "question as ChartWiz is asked it), 'formats' (the question, then the form the references take, in "
                'Korean), or a JSON file {"system": ..., "table": "{question} ...", "qa": ...}; recorded in '
                f"the run's settings (presets: {', '.join(INSTRUCTION_PRESETS)})"
            ),
            "metavar": "PRESET_OR_FILE",
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "run the code a checkpoint other than ChartWiz ships (its model or processor)"},
    )
    vllm_model_impl: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "--engine vllm, a model other than ChartWiz: vLLM's own implementation of its architecture (auto, "
                "the default, or vllm) or its transformers code run by vLLM (transformers)"
            ),
            "choices": VLLM_MODEL_IMPLS,
        },
    )
    blank_images: bool = field(
        default=False,
        metadata={
            "help": "image ablation: show the model a white image of each chart's size instead of the chart",
            "exclusive": ABLATION,
        },
    )
    shuffle_images: bool = field(
        default=False,
        metadata={
            "help": (
                "image ablation: show each row the chart of another row of the split (a seeded cycle of the charts)"
            ),
            "exclusive": ABLATION,
        },
    )
    restart: bool = field(default=False, metadata={"help": "start over in --out instead of resuming the run it holds"})
    bleu_tokenize: str = field(
        default=DEFAULT_BLEU_TOKENIZE,
        metadata={
            "help": (
                "sacrebleu tokenizer for BLEU: intl (default), 13a, char, or ko-mecab with `pip install sacrebleu[ko]`"
            )
        },
    )


def _refuse_generation_flags(
    args: EvaluateArguments, engine: EngineArguments, source: str, allowed: tuple = ()
) -> None:
    given = {**asdict(args), **asdict(engine)}
    flags = [option_string(name) for name in GENERATION_ONLY if given[name] and name not in allowed]
    if flags:
        raise ChartWizValueError(f"{source}: {', '.join(flags)} cannot go with it.")


def compare(args: EvaluateArguments, engine: EngineArguments) -> None:
    from chartwiz.evaluation.comparison import COMPARISON_CHART, COMPARISON_FILE, by_task_table, compare_reports

    _refuse_generation_flags(args, engine, "--compare reads existing report folders")
    runs = compare_reports(args.compare, args.out)
    print("\n".join(by_task_table(runs)))
    print(f"Wrote {COMPARISON_FILE} and {COMPARISON_CHART} to {args.out}")


def _print_metrics(args: EvaluateArguments, metrics: dict) -> None:
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


def run(args: EvaluateArguments, engine: EngineArguments):
    if args.compare is not None:
        return compare(args, engine)

    from chartwiz.evaluation import evaluate_model, score_run

    if args.predictions is not None:
        # --dataset names the split the predictions' ids are checked against.
        _refuse_generation_flags(args, engine, "--predictions scores an existing file", allowed=("dataset",))
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
            shuffled_images=args.shuffle_images,
            **same_named(args, evaluate_model),
            **asdict(engine),
        )
    _print_metrics(args, metrics)
    if not metrics["n"]:
        raise ChartWizValueError(
            f"no row was scored: all {len(metrics['skipped'])} were skipped, listed with their reasons in "
            f"{args.out}/report.md"
        )


NAME = "evaluate"
HELP = (
    "answer a dataset split and score it (or score a predictions file): metrics.json, report.md, report.png; "
    "or compare report folders: comparison.md, comparison.png"
)


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[EvaluateArguments, EngineArguments],
        help=HELP,
        description=(
            "Answers every row of a split of a `chartwiz data build` dataset with ChartWiz or any other "
            "image-text-to-text model and scores the answers by task and chart type (or scores a predictions file): "
            "metrics.json, report.md and report.png in --out; rerunning resumes. --compare puts earlier report "
            "folders side by side.\n"
            "데이터셋 분할의 모든 질문에 ChartWiz나 다른 이미지-텍스트 모델로 답하고 작업별·차트 유형별로 점수를 매겨 "
            "보고서를 만들거나, 여러 보고서를 나란히 비교합니다."
        ),
    )
    parser.set_defaults(
        func=run,
        interrupt_hint="the answers so far are saved: run the same command again to continue where it stopped",
    )
