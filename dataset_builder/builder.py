"""`datasets` builder for the AI-Hub chart image-text data: pretrain, finetune, gpt and all (finetune + gpt)."""

import json
import os
import uuid
from dataclasses import dataclass
from typing import Optional

import datasets

from chartwiz.errors import ChartWizValueError
from chartwiz.names import DEFAULT_DATASET_CONFIG

from .aihub import (
    CHART_TYPE_FOLDERS,
    BadRecord,
    bare_file_name,
    check_tree,
    iter_annotation_files,
    read_annotation,
)
from .rows import (
    FINETUNE_TASKS,
    check_image,
    conversation_id,
    find_chart_image,
    finetune_rows,
    iter_conversations,
    pretrain_row,
    qa_rows,
    qa_turns,
)


_DESCRIPTION = """\
Korean chart image-text data from AI-Hub ("chart image-text pair"), turned into TRL's conversational
prompt-completion format for ChartWiz: chart -> table pairs for projector pretraining, description / summary /
table instructions for finetuning, and GPT-generated question answering."""
_HOMEPAGE = "https://www.aihub.or.kr/"
_LICENSE = "AI-Hub terms of use: the images and annotations may not be redistributed without AI-Hub's permission."
_CITATION = ""

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "chart_type": datasets.Value("string"),
        "task": datasets.Value("string"),
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "completion": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
    }
)
CONFIG_TASKS = {
    "pretrain": ("pretrain",),
    "finetune": ("finetune",),
    "gpt": ("gpt",),
    "all": ("finetune", "gpt"),
}


@dataclass
class ChartWizAIHubConfig(datasets.BuilderConfig):
    """
    BuilderConfig for the AI-Hub charts.

    Args:
        data_dir (`str`): the AI-Hub tree, holding `train/` and `test/`.
        gpt_files (`tuple[str]`): JSON / JSONL files of GPT conversations (LLaVA format), for `gpt` and `all`.
        report_dir (`str`, *optional*): where each job appends its skipped records and counts (JSON Lines).
        instruction_paraphrases (`bool`): use paraphrased instructions, chosen from the row id, beside the original.
        shards_per_source (`int`): shards per chart-type folder and per GPT file, the units `num_proc` spreads.
        repeated_file (`str`, *optional*): a JSON `{source: reason}` of the GPT conversations to skip because an
            earlier one has their id (`repeated_conversations`, which needs every file in order: a job sees a shard).
    """

    gpt_files: tuple = ()
    report_dir: Optional[str] = None
    instruction_paraphrases: bool = False
    shards_per_source: int = 8
    repeated_file: Optional[str] = None


@dataclass(frozen=True)
class ChartShard:
    """The annotation files of one chart-type folder whose names hash to `index` of `count` shards."""

    folder: str
    index: int
    count: int


@dataclass(frozen=True)
class GptShard:
    """Every `count`-th conversation of a GPT file, starting at `index`."""

    path: str
    index: int
    count: int


class SkipLog:
    """Counts records read / written / skipped for one job and appends every skip to a JSON Lines file at once."""

    def __init__(self, report_dir: Optional[str], config: str, split: str):
        self.config, self.split = config, split
        self.read = self.written = self.skipped = 0
        self._file = None
        if report_dir is not None:
            os.makedirs(report_dir, exist_ok=True)
            path = os.path.join(report_dir, f"{config}-{split}-{uuid.uuid4().hex}.jsonl")
            self._file = open(path, "a", encoding="utf-8")

    def wrote(self):
        self.read += 1
        self.written += 1

    def skip(self, source: str, reason: str, records: int = 1, task: Optional[str] = None):
        self.read += records
        self.skipped += records
        if self._file is not None:
            entry = {"type": "skip", "config": self.config, "split": self.split, "source": source, "reason": reason}
            if task is not None:
                entry["task"] = task
            if records != 1:
                entry["records"] = records
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self):
        if self.read != self.written + self.skipped:
            raise RuntimeError(
                f"{self.config}/{self.split}: read {self.read} records but wrote {self.written} and skipped "
                f"{self.skipped}; the build lost records."
            )
        if self._file is not None:
            counts = {"read": self.read, "written": self.written, "skipped": self.skipped}
            self._file.write(
                json.dumps({"type": "counts", "config": self.config, "split": self.split, **counts}) + "\n"
            )
            self._file.close()


class ChartWizAIHub(datasets.GeneratorBasedBuilder):
    """AI-Hub charts for ChartWiz training, in TRL's conversational prompt-completion format."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ChartWizAIHubConfig
    BUILDER_CONFIGS = [
        ChartWizAIHubConfig(name="pretrain", version=VERSION, description="240K chart -> table pairs, no instruction"),
        ChartWizAIHubConfig(name="finetune", version=VERSION, description="table / description / summary per chart"),
        ChartWizAIHubConfig(name="gpt", version=VERSION, description="GPT-generated question answering, per turn"),
        ChartWizAIHubConfig(name="all", version=VERSION, description="finetune + gpt: the stage-2 mix"),
    ]
    DEFAULT_CONFIG_NAME = DEFAULT_DATASET_CONFIG

    def _info(self):
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=FEATURES,
            homepage=_HOMEPAGE,
            license=_LICENSE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ChartWizValueError("Pass data_dir= the AI-Hub tree (the folder holding train/ and test/).")
        root = os.path.abspath(self.config.data_dir)
        kinds = CONFIG_TASKS[self.config.name]
        if "gpt" in kinds and not self.config.gpt_files:
            raise ChartWizValueError(f"The {self.config.name!r} config needs gpt_files= the GPT conversation files.")
        count = max(1, self.config.shards_per_source)
        generators = []
        for split in check_tree(root):
            # Shards, not files: each job scans its folders itself, so no list of the whole tree is held.
            sources = []
            if "pretrain" in kinds or "finetune" in kinds:
                sources.extend(
                    ChartShard(folder, index, count) for folder in CHART_TYPE_FOLDERS for index in range(count)
                )
            if "gpt" in kinds:
                for path in self.config.gpt_files:
                    # JSON Lines stream line by line in every shard; a JSON array is parsed whole, so by one job.
                    shards = count if path.endswith(".jsonl") else 1
                    sources.extend(GptShard(os.path.abspath(path), index, shards) for index in range(shards))
            gen_kwargs = {"root": root, "split": split, "sources": sources}
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs=gen_kwargs))
        return generators

    def _generate_examples(self, root, split, sources):
        kinds = CONFIG_TASKS[self.config.name]
        log = SkipLog(self.config.report_dir, self.config.name, split)
        try:
            for source in sources:
                if isinstance(source, ChartShard):
                    files = iter_annotation_files(root, split, [source.folder], source.index, source.count)
                    yield from self._chart_examples(files, kinds, log)
                else:
                    conversations = iter_conversations(source.path, source.index, source.count)
                    yield from self._gpt_examples(root, split, conversations, log)
        finally:
            log.close()

    def _chart_examples(self, annotation_files, kinds, log: SkipLog):
        per_chart = 1 if "pretrain" in kinds else len(FINETUNE_TASKS)
        for entry in annotation_files:
            try:
                record = read_annotation(entry)
                check_image(record.image_path)
            except BadRecord as error:
                log.skip(entry.path, str(error), records=per_chart)
                continue
            key = f"{entry.split}/{entry.folder}/{entry.stem}"
            if "pretrain" in kinds:
                log.wrote()
                yield key, pretrain_row(record)
                continue
            for task, example in finetune_rows(record, self.config.instruction_paraphrases):
                if isinstance(example, BadRecord):
                    log.skip(entry.path, str(example), task=task)
                else:
                    log.wrote()
                    yield f"{key}-{task}", example

    def _gpt_examples(self, root, split, conversations, log: SkipLog):
        # A conversation belongs to the split whose img_data/ holds its image; unresolved ones are reported with train.
        repeated = {}
        if self.config.repeated_file:
            with open(self.config.repeated_file, encoding="utf-8") as file:
                repeated = json.load(file)
        for conversation in conversations:
            data = conversation.data
            if isinstance(data, str) or not isinstance(data, dict):
                if split == "train":
                    log.skip(conversation.source, data if isinstance(data, str) else "not a JSON object")
                continue
            filename = data.get("image")
            try:
                if not isinstance(filename, str) or not filename:
                    raise BadRecord("missing field 'image'")
                # A path would resolve outside img_data/ (an absolute one in both splits at once).
                bare_file_name(filename, "image")
            except BadRecord as error:
                if split == "train":
                    log.skip(conversation.source, str(error), records=_turn_count(data))
                continue
            try:
                found = find_chart_image(root, split, filename)
            except BadRecord as error:  # in two chart-type folders of this split
                log.skip(conversation.source, str(error), records=_turn_count(data))
                continue
            if found is None:
                other = "test" if split == "train" else "train"
                if split == "train" and not _in_split(root, other, filename):
                    log.skip(conversation.source, f"image {filename!r} is in neither split", records=_turn_count(data))
                continue
            image_path, chart_type = found
            if conversation.source in repeated:
                log.skip(conversation.source, repeated[conversation.source], records=_turn_count(data))
                continue
            try:
                turns = qa_turns(data)
                check_image(image_path)
            except BadRecord as error:
                log.skip(conversation.source, str(error), records=_turn_count(data))
                continue
            for number, example in qa_rows(conversation_id(data), image_path, chart_type, turns):
                if isinstance(example, BadRecord):
                    log.skip(f"{conversation.source}#turn{number}", str(example))
                else:
                    log.wrote()
                    yield f"{conversation.source}#{number}", example


def _in_split(root: str, split: str, filename: str) -> bool:
    try:
        return find_chart_image(root, split, filename) is not None
    except BadRecord:  # there twice: that split's job reports it
        return True


def _turn_count(conversation: dict) -> int:
    """Turns a conversation would give: how many records a skipped conversation stands for (at least 1)."""
    messages = conversation.get("conversations")
    return max(1, (len(messages) + 1) // 2) if isinstance(messages, list) else 1


__all__ = ["CONFIG_TASKS", "FEATURES", "ChartShard", "ChartWizAIHub", "ChartWizAIHubConfig", "GptShard", "SkipLog"]
