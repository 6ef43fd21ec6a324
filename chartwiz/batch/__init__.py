"""Answering a question file or a dataset split with an engine: the questions, the run's files and their resume
checks, the run itself, and merging the shards of a run split over processes."""

from .questions import DatasetImages, ImageFolder, read_dataset_questions, read_question_file, select_chunk
from .run import InferenceSummary, load_chat_engine, load_inference_engine, run_inference
from .shards import merge_shards


__all__ = [
    "DatasetImages",
    "ImageFolder",
    "InferenceSummary",
    "load_chat_engine",
    "load_inference_engine",
    "merge_shards",
    "read_dataset_questions",
    "read_question_file",
    "run_inference",
    "select_chunk",
]
