"""`chartwiz infer`: answer a question file or a dataset split in batches, resumably and in shards; merge shards."""

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from chartwiz.errors import ChartWizValueError
from chartwiz.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT


logger = logging.getLogger(__name__)


def _model_name(path: str) -> str:
    # A local checkpoint is named by its absolute path, so that the same model run from another folder resumes.
    return os.path.abspath(path) if os.path.isdir(path) else path


def engine_setting(engine: str) -> dict:
    """
    The engine as a setting the answers depend on: another engine's answers are not mixed in. The transformers
    engine is the absence of the setting, as in the files written before there was a choice, which still resume.
    """
    return {} if engine == "transformers" else {"engine": engine}


@dataclass(kw_only=True)
class EngineArguments:
    """What generates the answers, for `chartwiz infer` and `chartwiz evaluate`."""

    engine: str = field(
        default="transformers",
        metadata={
            "help": (
                "generate with transformers (default) or with vLLM (pip install vllm; continuous batching, "
                "parallelism)"
            ),
            "choices": ("transformers", "vllm"),
        },
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "--engine vllm: GPUs each model replica is split over"}
    )
    data_parallel_size: int = field(
        default=1, metadata={"help": "--engine vllm: model replicas sharing the questions"}
    )
    dtype: Optional[str] = field(
        default=None,
        metadata={
            "help": "default: bfloat16 on GPU, the checkpoint's dtype on CPU",
            "choices": ("auto", "bfloat16", "float16", "float32"),
        },
    )


@dataclass(kw_only=True)
class InferArguments:
    model: Optional[str] = field(default=None, metadata={"help": "ChartWiz checkpoint directory or Hub repo"})
    adapter: Optional[str] = field(default=None, metadata={"help": "a PEFT (LoRA) adapter folder to apply, unmerged"})
    questions: Optional[str] = field(default=None, metadata={"help": "question file (JSON array or JSON Lines)"})
    image_folder: Optional[str] = field(
        default=None, metadata={"help": "folder the question file's image paths are relative to"}
    )
    dataset: Optional[str] = field(
        default=None, metadata={"help": "a `chartwiz data build` folder (or Hub dataset) instead of --questions"}
    )
    config: str = field(
        default="gpt", metadata={"help": "dataset config (default: gpt; `chartwiz evaluate` defaults to finetune)"}
    )
    split: str = field(default="test", metadata={"help": "dataset split (default: test)"})
    answers: Optional[str] = field(
        default=None, metadata={"help": "output JSON Lines file (errors and settings files go beside it)"}
    )
    batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": (
                f"questions per batch (default {DEFAULT_BATCH_SIZE}); --engine vllm: requests in flight, batched by "
                f"vLLM (default {DEFAULT_MAX_IN_FLIGHT})"
            )
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "answer length limit"})
    context: str = field(
        default="reference",
        metadata={
            "help": (
                "earlier turns as context: the input's reference answers where given (default), or the model's own"
            ),
            "choices": ("reference", "model"),
        },
    )
    num_chunks: int = field(default=1, metadata={"help": "split the input into this many shards"})
    chunk_idx: Optional[int] = field(
        default=None,
        metadata={"help": "the shard this run answers, 0-based (default: 0, and required with --num-chunks above 1)"},
    )
    device: Optional[str] = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1... (default: every GPU, else the CPU)"}
    )
    background: str = field(
        default="auto",
        metadata={
            "help": "prepare images in a background thread: auto = on a GPU, or where torch leaves CPU cores free",
            "choices": ("auto", "on", "off"),
        },
    )
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})
    restart: bool = field(
        default=False, metadata={"help": "delete the answers, errors and settings files first and start over"}
    )
    merge: Optional[list[str]] = field(
        default=None, metadata={"help": "answers files of the shards to join into --answers", "metavar": "SHARD"}
    )


def engine_info(engine: EngineArguments, model) -> dict:
    """Where the answers were generated, for the settings file (not compared: a resumed run may use other GPUs)."""
    if engine.engine == "transformers":
        return {"device": str(model.device)}
    import vllm

    parallel = {"tensor_parallel_size": engine.tensor_parallel_size, "data_parallel_size": engine.data_parallel_size}
    return {"engine": engine.engine, "vllm": vllm.__version__, **parallel}


def read_input(args: InferArguments):
    """(questions, image loader, input settings) of `--questions`/`--image-folder` or `--dataset`."""
    from chartwiz.batch.questions import (
        DatasetImages,
        ImageFolder,
        load_split,
        read_dataset_questions,
        read_question_file,
    )

    if args.questions:
        if not args.image_folder:
            raise ChartWizValueError("--questions needs --image-folder, the folder its 'image' paths are relative to")
        questions = read_question_file(args.questions)
        loader = ImageFolder(args.image_folder)
        settings = {"questions": os.path.abspath(args.questions), "image_folder": os.path.abspath(args.image_folder)}
        return questions, loader, settings
    dataset = load_split(args.dataset, args.config, args.split)
    name = os.path.abspath(args.dataset) if os.path.isdir(args.dataset) else args.dataset
    settings = {"dataset": name, "config": args.config, "split": args.split}
    return read_dataset_questions(dataset), DatasetImages(dataset), settings


def merge(args: InferArguments):
    from chartwiz.batch.run_store import output_paths
    from chartwiz.batch.shards import merge_shards

    shards = []
    for path in args.merge:
        owner = next((p for p in args.merge if p != path and path in output_paths(p)), None)
        if owner is not None:  # a shell glob like answers.*.jsonl also matches the errors files
            logger.info("%s is the errors file of %s, merged with it", path, owner)
        else:
            shards.append(path)
    if not shards:
        raise ChartWizValueError("--merge got only errors files; give the shards' answers files")
    questions = loader = None
    _, meta_path = output_paths(shards[0])
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as file:
            stored = json.load(file)["settings"]
        source = stored.get("questions") or stored.get("dataset")
        if source and (os.path.exists(source) or "dataset" in stored):
            # The run's input as it is now: to order the merged answers as it, to leave out the answers of questions
            # edited or deleted since, and to find the questions no shard answered.
            run_input = {
                name: stored.get(name) for name in ("questions", "image_folder", "dataset", "config", "split")
            }
            try:
                questions, loader, _ = read_input(replace(args, **run_input))
            except (OSError, ValueError) as error:
                logger.warning(
                    "cannot read the run's input again (%s): the shards cannot be checked against it, and the merge "
                    "cannot say which ids are missing",
                    error,
                )
    summary = merge_shards(shards, args.answers, questions, loader)
    errors_path, _ = output_paths(args.answers)
    left_out = ", ".join(f"{count} ({reason})" for reason, count in sorted(summary.left_out.items()))
    left_out = f"; the shards' results left out: {left_out}" if left_out else ""
    print(
        f"Merged {len(summary.shards)} shards into {args.answers}: {summary.answers} answers, {summary.errors} bad "
        f"records ({errors_path}){left_out}."
    )
    if summary.missing:
        shown = ", ".join(f"{key[0]!r} turn {key[1]}" for key in summary.missing[:20])
        more = f" and {len(summary.missing) - 20} more" if len(summary.missing) > 20 else ""
        raise ChartWizValueError(
            f"{len(summary.missing)} questions of the input are in no shard, or changed since a shard answered "
            f"them: {shown}{more}. Run the missing shards (or rerun the whole input with --answers {args.answers}, "
            "which resumes from the merged file and asks only these)."
        )


def _check_arguments(args: InferArguments) -> None:
    """The refusals of a command that cannot run as given, before anything is read or loaded."""
    if not args.model or not args.answers or not (args.questions or args.dataset):
        raise ChartWizValueError(
            "give --model, --answers and the input: --questions FILE --image-folder DIR, or --dataset DIR "
            "(or --merge SHARD... --answers OUT.jsonl to join shards)"
        )
    if args.questions and args.dataset:
        raise ChartWizValueError("give either --questions or --dataset, not both")
    if args.dataset and args.context == "model":
        raise ChartWizValueError(
            "--context model needs a question file: a dataset row holds one turn, with the references as context"
        )
    if args.chunk_idx is None and args.num_chunks > 1:
        raise ChartWizValueError(
            f"--num-chunks {args.num_chunks} needs --chunk-idx K (0 to {args.num_chunks - 1}), the shard this run "
            "answers: run one command per shard, then join their answers with --merge"
        )


def _report_summary(args: InferArguments, questions, summary) -> None:
    """Prints what the run did; a run in which every question was a bad record is an error."""
    from chartwiz.batch.run_store import output_paths, read_jsonl

    errors_path, _ = output_paths(args.answers)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.error_kinds.items()))
    print(
        f"{summary.answered} answered, {summary.errors} bad records{f' ({kinds})' if kinds else ''} in "
        f"{summary.seconds:.1f} s ({summary.questions_per_second:.2f} questions/s); {summary.already_done} were done "
        f"before{summary.resume_note()}. Answers: {args.answers}"
        + (f", bad records: {errors_path}" if summary.errors else "")
    )
    if questions and not summary.answered and not read_jsonl(args.answers):
        # Every question a bad record is a run that did nothing: a script must not take it for a finished one.
        raise ChartWizValueError(
            f"none of the {len(questions)} questions could be asked: each is a bad record, listed with its reason in "
            f"{errors_path}"
        )


def run(args: InferArguments, engine: EngineArguments):
    if args.merge:
        if not args.answers:
            raise ChartWizValueError("--merge needs --answers OUT.jsonl, the merged file to write")
        return merge(args)
    _check_arguments(args)
    chunk_idx = 0 if args.chunk_idx is None else args.chunk_idx

    import transformers

    from chartwiz.batch.questions import select_chunk
    from chartwiz.batch.run import load_inference_engine, run_inference
    from chartwiz.fingerprints import model_fingerprints

    questions, loader, input_settings = read_input(args)
    if not questions:
        raise ChartWizValueError(f"{args.questions or args.dataset} holds no question to answer")
    records = len({question.record for question in questions})
    questions = select_chunk(questions, args.num_chunks, chunk_idx)
    if not questions:
        logger.warning("chunk %d of %d holds no record: the input has %d records", chunk_idx, args.num_chunks, records)
    model, processor = load_inference_engine(
        args.model, adapter=args.adapter, device=args.device, batch_size=args.batch_size, **asdict(engine)
    )
    settings = {
        "model": _model_name(args.model),
        "adapter": _model_name(args.adapter) if args.adapter else None,
        "dtype": str(model.dtype).replace("torch.", ""),
        **engine_setting(engine.engine),
        **input_settings,
        "num_chunks": args.num_chunks,
        "chunk_idx": chunk_idx,
    }
    info = {"transformers": transformers.__version__, "batch_size": args.batch_size, **engine_info(engine, model)}
    try:
        summary = run_inference(
            model,
            processor,
            questions,
            loader,
            args.answers,
            settings,
            batch_size=DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size,
            max_new_tokens=args.max_new_tokens,
            context=args.context,
            background={"auto": None, "on": True, "off": False}[args.background],
            progress=not args.no_progress,
            info=info,
            fingerprints=model_fingerprints(args.model, args.adapter),
            restart=args.restart,
        )
    finally:
        if hasattr(model, "close"):
            model.close()
    _report_summary(args, questions, summary)


NAME = "infer"
HELP = "answer a question file or a dataset split in batches (resumable, sharded); --merge joins shards"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[InferArguments, EngineArguments],
        help=HELP,
        description=(
            "Answers every question of a question file (LLaVA format: id, image, conversations or text) or of a "
            "`chartwiz data build` split, in length-sorted left-padded batches. Rerunning the same command resumes; "
            "--num-chunks/--chunk-idx split the input; --merge joins the shards' answers.\n"
            "질문 파일이나 데이터셋 분할의 모든 질문에 배치로 답합니다. 같은 명령을 다시 실행하면 이어서 진행하고, "
            "--merge로 샤드를 합칩니다."
        ),
    )
    parser.set_defaults(
        func=run,
        interrupt_hint="the answers so far are saved: run the same command again to continue where it stopped",
    )
