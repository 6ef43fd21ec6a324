"""`chartwiz infer`: answer a question file or a dataset split in batches, resumably and in shards; merge shards."""

import json
import logging
import os

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


def engine_info(args, model) -> dict:
    """Where the answers were generated, for the settings file (not compared: a resumed run may use other GPUs)."""
    if args.engine == "transformers":
        return {"device": str(model.device)}
    import vllm

    parallel = {"tensor_parallel_size": args.tensor_parallel_size, "data_parallel_size": args.data_parallel_size}
    return {"engine": args.engine, "vllm": vllm.__version__, **parallel}


def add_engine_arguments(parser) -> None:
    """`--engine`, the vLLM engine's parallelism and `--dtype`, for `chartwiz infer` and `chartwiz evaluate`."""
    parser.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="generate with transformers (default) or with vLLM (pip install vllm; continuous batching, parallelism)",
    )
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="--engine vllm: GPUs each model replica is split over"
    )
    parser.add_argument(
        "--data-parallel-size", type=int, default=1, help="--engine vllm: model replicas sharing the questions"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("auto", "bfloat16", "float16", "float32"),
        help="default: bfloat16 on GPU, the checkpoint's dtype on CPU",
    )


def read_input(args):
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


def merge(args):
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
            args.questions, args.image_folder = stored.get("questions"), stored.get("image_folder")
            args.dataset, args.config, args.split = stored.get("dataset"), stored.get("config"), stored.get("split")
            try:
                questions, loader, _ = read_input(args)
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


def run(args):
    if args.merge:
        if not args.answers:
            raise ChartWizValueError("--merge needs --answers OUT.jsonl, the merged file to write")
        return merge(args)
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
    if args.chunk_idx is None:
        if args.num_chunks > 1:
            raise ChartWizValueError(
                f"--num-chunks {args.num_chunks} needs --chunk-idx K (0 to {args.num_chunks - 1}), the shard this run "
                "answers: run one command per shard, then join their answers with --merge"
            )
        args.chunk_idx = 0

    from chartwiz.batch.questions import select_chunk
    from chartwiz.batch.run import load_inference_engine, run_inference
    from chartwiz.batch.run_store import output_paths, read_jsonl
    from chartwiz.fingerprints import model_fingerprints

    questions, loader, input_settings = read_input(args)
    if not questions:
        raise ChartWizValueError(f"{args.questions or args.dataset} holds no question to answer")
    records = len({question.record for question in questions})
    questions = select_chunk(questions, args.num_chunks, args.chunk_idx)
    if not questions:
        logger.warning(
            "chunk %d of %d holds no record: the input has %d records", args.chunk_idx, args.num_chunks, records
        )
    model, processor = load_inference_engine(
        args.model,
        args.engine,
        args.adapter,
        args.device,
        args.dtype,
        args.batch_size,
        args.tensor_parallel_size,
        args.data_parallel_size,
    )
    settings = {
        "model": _model_name(args.model),
        "adapter": _model_name(args.adapter) if args.adapter else None,
        "dtype": str(model.dtype).replace("torch.", ""),
        **engine_setting(args.engine),
        **input_settings,
        "num_chunks": args.num_chunks,
        "chunk_idx": args.chunk_idx,
    }
    import transformers

    info = {"transformers": transformers.__version__, "batch_size": args.batch_size, **engine_info(args, model)}
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


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "infer",
        help="answer a question file or a dataset split in batches (resumable, sharded); --merge joins shards",
        description=(
            "Answers every question of a question file (LLaVA format: id, image, conversations or text) or of a "
            "`chartwiz data build` split, in length-sorted left-padded batches. Rerunning the same command resumes; "
            "--num-chunks/--chunk-idx split the input; --merge joins the shards' answers.\n"
            "질문 파일이나 데이터셋 분할의 모든 질문에 배치로 답합니다. 같은 명령을 다시 실행하면 이어서 진행하고, "
            "--merge로 샤드를 합칩니다."
        ),
    )
    parser.add_argument("--model", help="ChartWiz checkpoint directory or Hub repo")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply, unmerged")
    parser.add_argument("--questions", help="question file (JSON array or JSON Lines)")
    parser.add_argument("--image-folder", help="folder the question file's image paths are relative to")
    parser.add_argument("--dataset", help="a `chartwiz data build` folder (or Hub dataset) instead of --questions")
    parser.add_argument(
        "--config", default="gpt", help="dataset config (default: gpt; `chartwiz evaluate` defaults to finetune)"
    )
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--answers", help="output JSON Lines file (errors and settings files go beside it)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=(
            f"questions per batch (default {DEFAULT_BATCH_SIZE}); --engine vllm: requests in flight, batched by vLLM "
            f"(default {DEFAULT_MAX_IN_FLIGHT})"
        ),
    )
    add_engine_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit")
    parser.add_argument(
        "--context",
        choices=("reference", "model"),
        default="reference",
        help="earlier turns as context: the input's reference answers where given (default), or the model's own",
    )
    parser.add_argument("--num-chunks", type=int, default=1, help="split the input into this many shards")
    parser.add_argument(
        "--chunk-idx",
        type=int,
        default=None,
        help="the shard this run answers, 0-based (default: 0, and required with --num-chunks above 1)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: every GPU, else the CPU)")
    parser.add_argument(
        "--background",
        choices=("auto", "on", "off"),
        default="auto",
        help="prepare images in a background thread: auto = on a GPU, or where torch leaves CPU cores free",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--restart", action="store_true", help="delete the answers, errors and settings files first and start over"
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="SHARD", help="answers files of the shards to join into --answers"
    )
    parser.set_defaults(
        func=run,
        prog=parser.prog,
        interrupt_hint="the answers so far are saved: run the same command again to continue where it stopped",
    )
