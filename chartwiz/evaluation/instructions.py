"""
The words `chartwiz evaluate --instructions` adds to each question, for models that were never taught the AI-Hub
answer formats: a preset or a JSON file, checked, and applied to a split's questions task by task.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Optional

from chartwiz.batch.questions import Question
from chartwiz.errors import ChartWizValueError


# The tasks of a built split (metrics.TASKS, spelt out so that reading instructions imports no metric library).
TASKS = ("table", "description", "summary", "qa")
QUESTION_FIELD = "{question}"
SYSTEM = "system"

# `none`: each row's question exactly as ChartWiz is asked it. `formats`: the question, then the form the references
# take, in Korean (a general model answers a table request with a Markdown table, which DePlot's metric cannot read).
PRESETS = {
    "none": {},
    "formats": {
        "table": (
            "{question}\n표만 다음 형식으로 답하세요. 첫 줄은 'TITLE | 차트 제목', 둘째 줄은 열 이름을 "
            "' | '로 구분해 '| 열1 | 열2', 그다음 줄부터 한 줄에 한 행씩 '행 이름 | 값 | 값'. "
            "값에는 차트의 단위(%, 만 명 등)를 붙이세요."
        ),
        "qa": "{question}\n차트를 보고 한 문장으로 짧게 답하세요. 숫자에는 차트의 단위를 붙이세요.",
        "description": "{question}\n차트의 종류, 제목, 항목과 값을 들어 한 단락으로 자세히 설명하세요.",
        "summary": "{question}\n차트의 핵심 내용을 두세 문장으로 요약하세요.",
    },
}
DEFAULT_PRESET = "none"


def check_instructions(instructions, source: str = "--instructions") -> dict[str, str]:
    """
    `instructions` as a dict after checking it: keys among the tasks and `system`, each value a non-empty string, and
    each task's value a template holding `{question}` (where the row's question goes). Raises `ValueError` naming
    what is wrong.
    """
    if not isinstance(instructions, dict):
        raise ChartWizValueError(
            f"{source}: expected a JSON object of task -> template, got {type(instructions).__name__}"
        )
    allowed = (*TASKS, SYSTEM)
    unknown = sorted(set(instructions) - set(allowed))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ChartWizValueError(f"{source}: unknown key(s) {names} (expected {', '.join(allowed)})")
    for key, value in instructions.items():
        if not isinstance(value, str) or not value.strip():
            raise ChartWizValueError(f"{source}: {key!r} should be a non-empty string")
        if key != SYSTEM and QUESTION_FIELD not in value:
            raise ChartWizValueError(
                f"{source}: the {key!r} template has no {QUESTION_FIELD}, where the row's question goes"
            )
    return {key: instructions[key] for key in allowed if key in instructions}


def load_instructions(spec: Optional[str]) -> dict[str, str]:
    """
    The instructions `spec` names: a preset (`none`, the default, or `formats`) or a JSON file holding an object such
    as `{"system": "...", "table": "{question}\\n...", "qa": "..."}` (tasks left out are asked as they are). An empty
    dict means the questions go as they are.
    """
    if spec is None or spec in PRESETS:
        return dict(PRESETS[spec or DEFAULT_PRESET])
    if not os.path.isfile(spec):
        raise ChartWizValueError(
            f"--instructions {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file that exists"
        )
    try:
        with open(spec, encoding="utf-8-sig") as file:
            instructions = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ChartWizValueError(f"{spec}: not a JSON object ({error})") from None
    return check_instructions(instructions, spec)


def apply_instructions(
    questions: Sequence[Question], tasks: Sequence[str], instructions: dict[str, str]
) -> list[Question]:
    """
    Each question of a split (`split_questions`) in its task's template; the earlier turns of a conversation stay as
    they are. A question that cannot be asked keeps its reason.
    """
    applied = []
    for question in questions:
        template = instructions.get(tasks[question.image]) if question.error is None else None
        if template is not None:
            question = replace(question, question=template.replace(QUESTION_FIELD, question.question))
        applied.append(question)
    return applied


__all__ = ["DEFAULT_PRESET", "PRESETS", "apply_instructions", "check_instructions", "load_instructions"]
