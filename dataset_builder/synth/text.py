"""The Korean text of a synthetic chart: its expected table, description, summary and QA, all read off its data."""

import random
import re
from typing import Optional

from .blocks import numeric, series_of, shown


KOREAN_TYPE_NAMES = {
    "vertical_bar": "세로 막대",
    "vertical_bar_stacked": "세로 누적 막대",
    "vertical_bar_100": "세로 100% 누적 막대",
    "horizontal_bar": "가로 막대",
    "horizontal_bar_stacked": "가로 누적 막대",
    "horizontal_bar_100": "가로 100% 누적 막대",
    "line": "꺾은선",
    "pie": "원형",
    "radial": "방사형",
    "mix": "혼합형",
}


def expected_table(blocks: list[dict]) -> str:
    lines = [f"TITLE | {blocks[0]['title']}"]
    header_done = False
    for block in blocks:
        categories = block["axis_label"]["x_axis"] or block["axis_label"]["y_axis"]
        if block["legend"] and categories and not header_done:
            lines.append("| " + " | ".join(categories))
            header_done = True
        for name, pairs in series_of(block):
            cells = [f"{shown(value)}{block['unit']}" for _, value in pairs]
            if block["legend"] and categories:
                lines.append(" | ".join([name, *cells]))
            else:
                lines.extend(f"{label} | {cell}" for (label, _), cell in zip(pairs, cells))
    return "\n".join(lines)


def facts_of(blocks: list[dict]) -> list[dict]:
    """Every value of the chart with its series, label and unit: what the description, summary and QA quote."""
    facts = []
    for block in blocks:
        for name, pairs in series_of(block):
            for label, value in pairs:
                facts.append(
                    {
                        "series": name,
                        "label": label,
                        "value": numeric(value),
                        "shown": shown(value),
                        "unit": block["unit"],
                    }
                )
    return facts


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:.1f}".rstrip("0").rstrip(".")


def _name(fact: dict) -> str:
    return f"{fact['series']}의 {fact['label']}" if fact["series"] else fact["label"]


def description(title: str, chart_type: str, facts: list[dict], blocks: list[dict]) -> str:
    largest = max(facts, key=lambda fact: fact["value"])
    smallest = min(facts, key=lambda fact: fact["value"])
    series = [name for block in blocks for name in block["legend"]]
    parts = [f"이 차트는 '{title}'을(를) 나타낸 {KOREAN_TYPE_NAMES[chart_type]} 차트입니다."]
    if series:
        parts.append(f"범례는 {', '.join(series)}(으)로 구성되어 있습니다.")
    parts.append(f"가장 큰 값은 {_name(largest)}으로 {largest['shown']}{largest['unit']}입니다.")
    parts.append(f"가장 작은 값은 {_name(smallest)}으로 {smallest['shown']}{smallest['unit']}입니다.")
    return " ".join(parts)


_DESCRIBED_TYPE = re.compile(r"나타낸 (.+?) 차트입니다")
_TYPE_OF_KOREAN_NAME = {name: chart_type for chart_type, name in KOREAN_TYPE_NAMES.items()}


def described_chart_type(description: str) -> Optional[str]:
    """The chart type a description in the synthetic wording names (`... 나타낸 꺾은선 차트입니다.`), or None."""
    match = _DESCRIBED_TYPE.search(description)
    return _TYPE_OF_KOREAN_NAME.get(match.group(1)) if match else None


def summary(title: str, facts: list[dict]) -> list[str]:
    largest = max(facts, key=lambda fact: fact["value"])
    smallest = min(facts, key=lambda fact: fact["value"])
    gap = largest["value"] - smallest["value"]
    return [
        f"'{title}' 차트에서 {_name(largest)}이(가) {largest['shown']}{largest['unit']}로 가장 높습니다.",
        f"가장 낮은 {_name(smallest)}과(와)의 차이는 {_fmt(gap)}{largest['unit']}입니다.",
    ]


def qa_record(stem: str, facts: list[dict], rng: random.Random) -> dict:
    """A LLaVA-format conversation whose answers are computed from the data, with follow-up turns."""
    same_unit = [fact for fact in facts if fact["unit"] == facts[0]["unit"]]
    largest = max(same_unit, key=lambda fact: fact["value"])
    smallest = min(same_unit, key=lambda fact: fact["value"])
    first, second = rng.sample(same_unit, 2)
    unit = facts[0]["unit"]
    turns = [
        ("가장 큰 값을 가진 항목은 무엇인가요?", f"{_name(largest)}이(가) {largest['shown']}{unit}로 가장 큽니다."),
        ("그럼 가장 작은 항목은요?", f"{_name(smallest)}이(가) {smallest['shown']}{unit}로 가장 작습니다."),
        (f"{_name(first)}의 값은 얼마인가요?", f"{first['shown']}{unit}입니다."),
        (
            f"{_name(first)}과(와) {_name(second)}의 차이는 얼마인가요?",
            f"{_fmt(abs(first['value'] - second['value']))}{unit} 차이가 납니다.",
        ),
        (
            "모든 값을 더하면 얼마인가요?",
            f"합계는 {_fmt(round(sum(fact['value'] for fact in same_unit), 1))}{unit}입니다.",
        ),
        (
            f"{_name(first)}과(와) {_name(second)} 중 어느 쪽이 더 큰가요?",
            "두 값이 같습니다."
            if first["value"] == second["value"]
            else f"{_name(first if first['value'] > second['value'] else second)}이(가) 더 큽니다.",
        ),
    ]
    chosen = turns[:2] + rng.sample(turns[2:], rng.randint(1, 3))
    conversations = []
    for number, (question, answer) in enumerate(chosen):
        conversations.append({"from": "human", "value": f"<image>\n{question}" if number == 0 else question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": stem, "image": f"{stem}.jpg", "conversations": conversations}
