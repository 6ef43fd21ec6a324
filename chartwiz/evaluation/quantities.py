"""
Numbers with their units as ChartWiz's tables and Korean answers write them (`950만 명`, `30%`): the table metric
reads cells with `parse_quantity`, relaxed accuracy reads sentences with `find_quantities`.
"""

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional


# A number as our tables and answers write it: optional sign, optional thousands separators, optional decimals.
_NUMBER = r"[+\-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+\-\u2212]?\.\d+"
_QUANTITY_CELL = re.compile(rf"\s*({_NUMBER})\s*(\D*?)\s*")


def _to_number(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


@dataclass(frozen=True)
class Quantity:
    """A number and the unit written after it (`950만 명` -> 950.0, `만명`)."""

    value: float
    unit: str

    @property
    def comparable(self) -> float:
        """The value with a percentage read as a fraction, as ChartQA compares numbers."""
        return self.value / 100.0 if self.unit == "%" else self.value


def parse_quantity(cell: str) -> Optional[Quantity]:
    """
    A table cell read as a number followed by a unit: the unit is everything after the number, with no digit in
    it, spaces removed and compared literally (`950만 명` -> 950, `만명`; `30%` -> 30, `%`; `12` -> 12, ``).
    Magnitude words such as 만 / 억 / 천 belong to the unit. None for anything else (`2021년 3월`, `약 30`, `-`).
    """
    match = _QUANTITY_CELL.fullmatch(cell)
    if match is None:
        return None
    return Quantity(_to_number(match.group(1)), re.sub(r"\s+", "", match.group(2)))


# Korean particles and copula endings that glue onto a unit (`명으로`, `%입니다`), longest first.
_PARTICLES = sorted(
    (
        "입니다 이었습니다 였습니다 이었으며 였으며 이었고 였고 이었다 였다 이며 이고 이다 이나 이라 라 "
        "으로서 으로써 으로 로서 로써 로 에서 에게 에는 까지 부터 보다 만큼 씩 "
        "이 가 은 는 을 를 의 에 와 과 도 나"
    ).split(),
    key=len,
    reverse=True,
)
# `이(가)`, `(으)로`: both particle forms written out, as generated answers often do.
_ALTERNATIVE_PARTICLE = re.compile(r"\([가-힣]{1,2}\)")
_MAGNITUDE = re.compile(r"[십백천만억조]+")
_SENTENCE_NUMBER = re.compile(rf"(?<![\d.,A-Za-z])(?:{_NUMBER})")
_GLUED_WORD = re.compile(r"[^\s\d]*")
_NEXT_WORD = re.compile(r"\s+([^\s\d]+)")


def _strip_particles(word: str) -> str:
    word = _ALTERNATIVE_PARTICLE.sub("", word)
    while True:
        word = _trim_punctuation(word)
        for particle in _PARTICLES:
            if word.endswith(particle):
                word = word[: -len(particle)]
                break
        else:
            return word


def _trim_punctuation(word: str) -> str:
    # Sentence punctuation around a unit goes (`명.`, `%),`); `%` is punctuation to Unicode but is a unit here.
    while word and word[-1] != "%" and unicodedata.category(word[-1]).startswith("P"):
        word = word[:-1]
    return word


def find_quantities(text: str) -> list[Quantity]:
    """
    The numbers of a sentence, in order, each with its unit: the word glued to the number, or the next word when
    nothing is glued to it (`950 명`) or only a magnitude such as 만 or 억 is (`950만 명`), without the Korean
    particles and endings that follow it (`명으로` -> `명`, `%입니다` -> `%`) and without spaces. `1,000`-style numbers
    are read whole; a number glued to a preceding digit, point, comma or Latin letter (`A3`) is not one.
    """
    text = unicodedata.normalize("NFKC", text)
    quantities = []
    for match in _SENTENCE_NUMBER.finditer(text):
        word = _GLUED_WORD.match(text, match.end()).group()
        if not word or _MAGNITUDE.fullmatch(word):
            following = _NEXT_WORD.match(text, match.end() + len(word))
            if following is not None:
                word += following.group(1)
        quantities.append(Quantity(_to_number(match.group()), _strip_particles(word).lower()))
    return quantities


__all__ = ["Quantity", "find_quantities", "parse_quantity"]
