"""
The names that the model package, the data and the application share, defined once: the training instructions, the
image placeholder, the dataset configs, the AI-Hub chart types and their folders, and the one Unicode form of text.

It is on the standard library alone: `dataset_builder` imports it without loading torch or transformers. The
remote-code files travel alone with a checkpoint, so they keep their own copies of the names they need (the
processor's `<image>` default and normal form); `tests/test_layers.py` holds those copies equal to these.
"""

import importlib.util
import os
import unicodedata


# Text is read and kept in this Unicode form (composed Hangul syllables).
TEXT_NORMAL_FORM = "NFC"

# The placeholder of the chart in a prompt; the processor expands it to one token per image patch.
IMAGE_TOKEN = "<image>"

# The datasets `chartwiz data build` writes: `pretrain` (stage 1: chart -> table), `finetune` (tables, descriptions,
# summaries), `gpt` (question answering) and `all` (finetune + gpt, the stage-2 mix, made from the other two).
BUILT_CONFIGS = ("pretrain", "finetune", "gpt")
DATASET_CONFIGS = (*BUILT_CONFIGS, "all")
DEFAULT_DATASET_CONFIG = "finetune"

# AI-Hub folder suffix -> canonical chart_type, in the contract's order (docs/aihub-format.md).
CHART_TYPE_FOLDERS = {
    "etc_mix": "mix",
    "etc_radial": "radial",
    "horizontal bar_100per accumulation": "horizontal_bar_100",
    "horizontal bar_accumulation": "horizontal_bar_stacked",
    "horizontal bar_standard": "horizontal_bar",
    "line_standard": "line",
    "pie_standard": "pie",
    "vertical bar_100per accumulation": "vertical_bar_100",
    "vertical bar_accumulation": "vertical_bar_stacked",
    "vertical bar_standard": "vertical_bar",
}
CHART_TYPES = list(CHART_TYPE_FOLDERS.values())

FINETUNE_TASKS = ("table", "description", "summary")

# The Hangul font the model package ships (`chartwiz_hf/fonts/`, SIL Open Font License): the chart header's font (the
# image processor keeps its own copy of the name) and the text of the synthetic charts and of evaluation reports.
FONT_FILENAME = "NanumGothic.ttf"


def shipped_font_path() -> str:
    """The font's path, found without importing `chartwiz_hf`: importing it registers the model, which loads torch."""
    package = importlib.util.find_spec("chartwiz_hf")
    return os.path.join(package.submodule_search_locations[0], "fonts", FONT_FILENAME)


# The chat templates shipped in `chartwiz_hf/chat_templates/` (`<name>.jinja`): the 1.3B model's and the 7B model's.
CHAT_TEMPLATES = ("synatra_mini", "vicuna_v1")

# Where no batch size is given: the questions the transformers engines generate together (one left-padded batch), and
# the requests the vLLM engines keep in flight (vLLM batches among them).
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_IN_FLIGHT = 256

# The first instruction of each set is the original ChartWiz one; the others are paraphrases.
INSTRUCTIONS = {
    "table": [
        "이 차트를 테이블 정보로 변경해줘.",
        "차트의 데이터를 표로 정리해줘.",
        "이 그래프의 기반 데이터를 테이블로 만들어줘.",
        "차트에 나타난 값을 표 형식으로 바꿔줘.",
    ],
    "description": [
        "이 차트를 자세히 설명해줘.",
        "차트의 내용을 상세하게 서술해줘.",
        "이 그래프가 보여주는 것을 자세히 알려줘.",
    ],
    "summary": [
        "이 차트의 내용을 요약해줘.",
        "차트를 간단히 요약해줘.",
        "이 그래프의 핵심 내용을 짧게 정리해줘.",
    ],
}


def normalize_text(text: str) -> str:
    """
    `text` in the one Unicode form ChartWiz reads (`TEXT_NORMAL_FORM`, NFC): Korean typed in decomposed jamo becomes
    the composed syllables. The processor reads every prompt so; training rows and scored texts are kept so too.
    """
    return unicodedata.normalize(TEXT_NORMAL_FORM, text)


__all__ = [
    "BUILT_CONFIGS",
    "CHART_TYPES",
    "CHART_TYPE_FOLDERS",
    "CHAT_TEMPLATES",
    "DEFAULT_BATCH_SIZE",
    "DATASET_CONFIGS",
    "DEFAULT_DATASET_CONFIG",
    "DEFAULT_MAX_IN_FLIGHT",
    "FINETUNE_TASKS",
    "FONT_FILENAME",
    "IMAGE_TOKEN",
    "INSTRUCTIONS",
    "TEXT_NORMAL_FORM",
    "normalize_text",
    "shipped_font_path",
]
