import functools
import math
import re
from itertools import permutations, zip_longest

import pytest
from rouge_score import rouge_scorer

from chartwiz.evaluation.metrics import (
    Quantity,
    anls,
    bleu,
    exact_match,
    find_quantities,
    korean_words,
    parse_quantity,
    parse_table,
    relaxed_accuracy,
    relaxed_correct,
    rms,
    rouge_l,
    score_task,
    table_datapoints,
    table_score,
)


# ---------------------------------------------------------------------------------------------------------------
# An independent reference of the table metric: the definition written out plainly, with a textbook edit distance
# and a brute-force search over every key assignment instead of scipy's Hungarian solver.


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


@functools.cache
def _anls(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    normalized = _edit_distance(a, b) / max(len(a), len(b))
    return 1 - normalized if normalized < 0.5 else 0.0  # pix2struct's anls_metric: `< theta` keeps a score


def _reference_points(text: str, transposed: bool) -> dict:
    lines = [line for line in text.lower().split("\n") if line.strip()]
    points = {}
    if lines and lines[0].split("|")[0].strip() == "title" and "|" in lines[0]:
        points["title"] = "|".join(lines[0].split("|")[1:]).strip()
        lines = lines[1:]
    grid = [[cell.strip() for cell in line.split("|")] for line in lines]
    if grid and grid[0][0] != "" and all(len(row) <= 2 for row in grid):
        grid.insert(0, [""] * max(len(row) for row in grid))  # the one-series layout has no header line
    if transposed:
        grid = [list(column) for column in zip_longest(*grid, fillvalue="")]
    if len(grid) >= 2 and len(grid[0]) >= 2:
        header = grid[0]
        for row in grid[1:]:
            for j in range(1, min(len(header), len(row))):
                points[" ".join(name for name in (row[0], header[j]) if name)] = row[j]
    return points


def _closeness(target: float, prediction: float) -> float:
    distance = min(abs(target - prediction) / abs(target), 1.0)
    return 1 - distance if distance < 0.1 else 0.0


def _float_or_none(cell: str):
    try:
        return float(cell[:-1]) / 100 if cell.endswith("%") else float(cell)
    except ValueError:
        return None


def _number_and_unit(cell: str):
    match = re.fullmatch(r"\s*(\d[\d,]*(?:\.\d+)?)\s*([^0-9]*)", cell)
    if match is None:
        return None
    return float(match.group(1).replace(",", "")), match.group(2).replace(" ", "")


def _reference_cell(target: str, prediction: str, units: bool) -> float:
    if units:
        t, p = _number_and_unit(target), _number_and_unit(prediction)
        if t and p and t[1] == p[1] and t[0] != 0:
            return _closeness(t[0], p[0])
    t, p = _float_or_none(target), _float_or_none(prediction)
    if p is not None and t:
        return _closeness(t, p)
    return 1.0 if target == prediction else _anls(target, prediction)


def _reference_prf(target: dict, prediction: dict, units: bool):
    if not target and not prediction:
        return 1.0, 1.0, 1.0
    if not target:
        return 0.0, 1.0, 0.0
    if not prediction:
        return 0.0, 0.0, 0.0
    t_items, p_items = list(target.items()), list(prediction.items())
    if len(t_items) <= len(p_items):
        assignments = [
            list(zip(range(len(t_items)), perm)) for perm in permutations(range(len(p_items)), len(t_items))
        ]
    else:
        assignments = [
            list(zip(perm, range(len(p_items)))) for perm in permutations(range(len(t_items)), len(p_items))
        ]
    best_cost, best_scores = math.inf, set()
    for pairs in assignments:
        cost = sum(1 - _anls(t_items[i][0], p_items[j][0]) for i, j in pairs)
        score = sum(
            _anls(t_items[i][0], p_items[j][0]) * _reference_cell(t_items[i][1], p_items[j][1], units)
            for i, j in pairs
        )
        if cost < best_cost - 1e-9:
            best_cost, best_scores = cost, {round(score, 9)}
        elif abs(cost - best_cost) <= 1e-9:
            best_scores.add(round(score, 9))
    assert len(best_scores) == 1, "several minimum-cost assignments score differently: pick another test table"
    score = best_scores.pop()
    if score == 0:
        return 0.0, 0.0, 0.0
    precision, recall = score / len(p_items), score / len(t_items)
    return precision, recall, 2 * precision * recall / (precision + recall)


def reference_table_score(target: str, prediction: str, units: bool = False):
    target_points = _reference_points(target, transposed=False)
    readings = [_reference_prf(target_points, _reference_points(prediction, t), units) for t in (True, False)]
    return max(readings, key=lambda prf: prf[2])  # the first (transposed) reading wins a tie


SHARES = "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 30% | 35.5%\nB사 | 70% | 64.5%"
POPULATION = "TITLE | 지역별 인구\n서울 | 950만 명\n부산 | 340만 명\n대구 | 240만 명"
DEPLOT_LAYOUT = "characteristic | 2021 | 2022\nA | 1,000 | 2\nB | 3 | 4.5"
ONE_CELL = "TITLE | 비율\nA | 30%"
SALES = "TITLE | 항목별 금액\n판매 | 120\n판매량 | 40"

TRICKY_PAIRS = [
    pytest.param(SHARES, SHARES, id="same"),
    pytest.param(
        SHARES, "TITLE | 연도별 점유율\n| A사 | B사\n2021 | 30% | 70%\n2022 | 35.5% | 64.5%", id="transposed"
    ),
    pytest.param(SHARES, "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 30% | 35.5%", id="missing-row"),
    pytest.param(SHARES, SHARES + "\nC사 | 1% | 2%", id="extra-row"),
    pytest.param(
        SHARES,
        "TITLE | 연도별 점유율\n| 2021 | 2022 | 2023\nA사 | 30% | 35.5% | 40%\nB사 | 70% | 64.5% | 60%",
        id="extra-column",
    ),
    pytest.param(SHARES, "TITLE | 연도별 점유율\n| 2021\nA사 | 30%\nB사 | 70%", id="missing-column"),
    pytest.param(
        SHARES, "TITLE | 연도별 점유율\n| 2022 | 2021\nA사 | 35.5% | 30%\nB사 | 64.5% | 70%", id="reordered-columns"
    ),
    pytest.param(
        SHARES, "TITLE | 연도별 점유율\n| 2021 | 2022\nA샤 | 30% | 35.5%\nB사 | 70% | 64.5%", id="misspelt-header"
    ),
    pytest.param(
        SHARES,
        "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 31.5% | 35.5%\nB사 | 56% | 64.5%",
        id="off-5-and-20-percent",
    ),
    pytest.param(SHARES, "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 0.3 | 0.355\nB사 | 0.7 | 0.645", id="fractions"),
    pytest.param(SHARES, "| 2021 | 2022\nA사 | 30% | 35.5%\nB사 | 70% | 64.5%", id="no-title"),
    pytest.param(SHARES, "TITLE | 연도별 비중\n| 2021 | 2022\nA사 | 30% | 35.5%\nB사 | 70% | 64.5%", id="other-title"),
    pytest.param(SHARES, "TITLE | 연도별 점유율", id="title-only"),
    pytest.param(SHARES, "", id="empty"),
    pytest.param(SHARES, "차트를 읽을 수 없습니다.", id="sentence"),
    pytest.param(SHARES, "A사 30% 35.5%\n|||\n| | |", id="pipes-only"),
    pytest.param(POPULATION, POPULATION, id="one-series-same"),
    pytest.param(
        POPULATION, "TITLE | 지역별 인구\n서울 | 951만 명\n부산 | 340만명\n대구 | 190만 명", id="one-series-units"
    ),
    pytest.param(
        POPULATION, "TITLE | 지역별 인구\n서울 | 950명\n부산 | 340만 명\n대구 | 240만 명", id="one-series-other-unit"
    ),
    pytest.param(
        POPULATION, "TITLE | 지역별 인구\n대구 | 240만 명\n서울 | 950만 명", id="one-series-reordered-missing"
    ),
    pytest.param(
        POPULATION,
        "TITLE | 지역별 인구\n| 서울 | 부산 | 대구\n값 | 950만 명 | 340만 명 | 240만 명",
        id="one-series-transposed",
    ),
    pytest.param(POPULATION, "지역별 인구\n서울 | 950만 명", id="title-without-marker"),
    pytest.param(DEPLOT_LAYOUT, DEPLOT_LAYOUT, id="deplot-same"),
    pytest.param(DEPLOT_LAYOUT, "characteristic | 2021 | 2022\nA | 1000 | 2.1\nB | 3 | 4.5", id="deplot-numbers"),
    pytest.param(DEPLOT_LAYOUT, "| A | B\n2021 | 1,000 | 3\n2022 | 2 | 4.5", id="deplot-transposed"),
    pytest.param(ONE_CELL, ONE_CELL, id="one-cell-same"),
    pytest.param(ONE_CELL, "TITLE | 비율\nA | 0.3", id="one-cell-fraction"),
    pytest.param(ONE_CELL, "TITLE | 비율\nB | 30%", id="one-cell-other-key"),
    pytest.param(SALES, "TITLE | 항목별 금액\n판촉 | 120\n판매량 | 40", id="key-at-the-threshold"),
    pytest.param(SALES, "TITLE | 항목별 금액\n판매 | 120\n판촉량 | 40", id="key-under-the-threshold"),
    pytest.param("TITLE | 담당\n1분기 | 판매", "TITLE | 담당\n1분기 | 판촉", id="cell-at-the-threshold"),
    pytest.param("TITLE | 비율", "TITLE | 비율", id="title-only-target"),
    pytest.param("TITLE | 비율", "TITLE | 비율\nA | 1", id="title-only-target-extra"),
]


@pytest.mark.parametrize("units", [False, True], ids=["rms", "rms_units"])
@pytest.mark.parametrize("target,prediction", TRICKY_PAIRS)
def test_table_score_matches_the_brute_force_reference(target, prediction, units):
    score = table_score(target, prediction, units=units)
    expected = reference_table_score(target, prediction, units=units)
    assert (score.precision, score.recall, score.f1) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# ANLS at its threshold, by hand from pix2struct's `anls_metric`: `1 - d / max(len)` while that is `< 0.5`, else 0


def test_anls_scores_zero_once_the_normalized_distance_reaches_the_threshold():
    assert anls("판매", "판촉") == 0.0  # one edit in two characters: exactly 0.5
    assert anls("abcd", "abxy") == 0.0  # two edits in four
    assert anls("판매량", "판촉량") == pytest.approx(1 - 1 / 3)  # one edit in three keeps 2/3
    assert anls("abcd", "abcx") == pytest.approx(0.75)
    assert anls("abcd", "abc") == pytest.approx(0.75)  # a deletion, divided by the longer length
    assert anls("abcd", "abxy", threshold=0.6) == pytest.approx(0.5)
    assert anls("", "") == 1.0 and anls("", "a") == 0.0 and anls("판매", "판매") == 1.0


def test_keys_at_the_threshold_are_not_paired():
    # "판매" vs "판촉" keys: DePlot's code scores the pair 0, so its cell counts for nothing; "판매량" vs "판촉량"
    # keeps 2/3 of its cell. Three datapoints each side (the title and two cells).
    at = table_score(SALES, SALES.replace("판매 |", "판촉 |"))
    assert at.f1 == pytest.approx(2 / 3)
    under = table_score(SALES, SALES.replace("판매량 |", "판촉량 |"))
    assert under.f1 == pytest.approx((2 + 2 / 3) / 3)
    # The same rule for text cells: "판촉" read for "판매" scores 0 (the title alone of two datapoints).
    assert table_score("TITLE | 담당\n1분기 | 판매", "TITLE | 담당\n1분기 | 판촉").f1 == pytest.approx(1 / 2)


# ---------------------------------------------------------------------------------------------------------------
# Parsing the table layout


def test_header_line_with_an_empty_corner_cell():
    points = table_datapoints(parse_table(SHARES))
    assert points == {
        "title": "연도별 점유율",
        "a사 2021": "30%",
        "a사 2022": "35.5%",
        "b사 2021": "70%",
        "b사 2022": "64.5%",
    }
    # DePlot's own split on " | " glues the empty corner cell to the first year: the keys would be wrong.
    assert "| 2021 | 2022".split(" | ") == ["| 2021", "2022"]
    transposed = table_datapoints(parse_table(SHARES, transposed=True))
    assert transposed["2021 a사"] == "30%" and transposed["2022 b사"] == "64.5%" and len(transposed) == 5


def test_one_series_and_pie_tables_have_no_header_line():
    points = table_datapoints(parse_table(POPULATION))
    assert points == {"title": "지역별 인구", "서울": "950만 명", "부산": "340만 명", "대구": "240만 명"}
    assert table_datapoints(parse_table(POPULATION, transposed=True)) == points
    assert table_datapoints(parse_table(ONE_CELL)) == {"title": "비율", "a": "30%"}


def test_deplot_layout_uses_its_first_line_as_the_header():
    table = parse_table(DEPLOT_LAYOUT)
    assert table.title is None and table.header == ("characteristic", "2021", "2022")
    assert table_datapoints(table) == {"a 2021": "1,000", "a 2022": "2", "b 2021": "3", "b 2022": "4.5"}


def test_unparseable_text_has_no_datapoints():
    for text in ("", "\n\n", "차트를 읽을 수 없습니다.", "TITLE"):
        assert table_datapoints(parse_table(text)) == {}


# ---------------------------------------------------------------------------------------------------------------
# The table metric against hand computations


def test_identical_and_transposed_tables_score_one():
    transposed = "TITLE | 연도별 점유율\n| A사 | B사\n2021 | 30% | 70%\n2022 | 35.5% | 64.5%"
    for prediction in (SHARES, transposed, SHARES.upper()):
        score = table_score(SHARES, prediction)
        assert (score.precision, score.recall, score.f1) == pytest.approx((1, 1, 1))


def test_numbers_off_by_five_and_twenty_percent():
    # 5 datapoints: the title, three exact cells, and one cell off: 30% -> 31.5% keeps 0.95, 30% -> 36% keeps 0.
    five = table_score(SHARES, SHARES.replace("| 30% |", "| 31.5% |"))
    assert five.precision == pytest.approx(4.95 / 5) and five.f1 == pytest.approx(4.95 / 5)
    twenty = table_score(SHARES, SHARES.replace("| 30% |", "| 36% |"))
    assert twenty.f1 == pytest.approx(4 / 5)
    # At 10% (DePlot's threshold) a number already scores 0.
    assert table_score(SHARES, SHARES.replace("| 70% |", "| 77% |")).f1 == pytest.approx(4 / 5)


def test_missing_and_extra_rows_and_columns():
    missing_row = table_score(SHARES, "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 30% | 35.5%")
    assert (missing_row.precision, missing_row.recall) == pytest.approx((1, 3 / 5))
    assert missing_row.f1 == pytest.approx(2 * (3 / 5) / (1 + 3 / 5))  # 0.75: the true F1, not the recall
    extra_column = table_score(
        SHARES, "TITLE | 연도별 점유율\n| 2021 | 2022 | 2023\nA사 | 30% | 35.5% | 40%\nB사 | 70% | 64.5% | 60%"
    )
    assert (extra_column.precision, extra_column.recall) == pytest.approx((5 / 7, 1))
    reordered = table_score(SHARES, "TITLE | 연도별 점유율\n| 2022 | 2021\nA사 | 35.5% | 30%\nB사 | 64.5% | 70%")
    assert reordered.f1 == pytest.approx(1)


def test_misspelt_header_scales_its_cells_by_the_key_similarity():
    score = table_score(SHARES, SHARES.replace("A사", "A샤"))
    # "a샤 2021" is one edit from "a사 2021" (7 characters): both of its cells keep 6/7.
    assert score.f1 == pytest.approx((3 + 2 * 6 / 7) / 5)


def test_percentages_read_as_fractions_and_title_only_or_empty_predictions():
    fractions = "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 0.3 | 0.355\nB사 | 0.7 | 0.645"
    assert table_score(SHARES, fractions).f1 == pytest.approx(1)
    title_only = table_score(SHARES, "TITLE | 연도별 점유율")
    assert (title_only.precision, title_only.recall) == pytest.approx((1, 1 / 5))
    for prediction in ("", "차트를 읽을 수 없습니다.", "TITLE | x | y\n\n"):
        score = table_score(SHARES, prediction)
        assert (score.precision, score.recall, score.f1) == (0, 0, 0)


def test_units_variant_compares_numbers_that_carry_the_same_unit():
    close = POPULATION.replace("950만 명", "951만 명")
    # DePlot reads "951만 명" as text: one edit in six characters. With units it is 1/950 off.
    assert table_score(POPULATION, close).f1 == pytest.approx((3 + 5 / 6) / 4)
    assert table_score(POPULATION, close, units=True).f1 == pytest.approx((3 + 1 - 1 / 950) / 4)
    far = POPULATION.replace("950만 명", "590만 명")
    assert table_score(POPULATION, far).f1 == pytest.approx((3 + 4 / 6) / 4)  # text: two edits, still similar
    assert table_score(POPULATION, far, units=True).f1 == pytest.approx(3 / 4)  # a number 38% off
    other_unit = POPULATION.replace("950만 명", "950명")
    assert table_score(POPULATION, other_unit, units=True).f1 == pytest.approx((3 + 4 / 6) / 4)  # falls back to text
    spacing = POPULATION.replace("950만 명", "950만명")
    assert table_score(POPULATION, spacing, units=True).f1 == pytest.approx(1)


def test_parse_quantity():
    assert parse_quantity("950만 명") == Quantity(950, "만명")
    assert parse_quantity(" 1,234.5kg ") == Quantity(1234.5, "kg")
    assert parse_quantity("30%") == Quantity(30, "%")
    assert parse_quantity("-3.5점") == Quantity(-3.5, "점")
    assert parse_quantity("12") == Quantity(12, "")
    for cell in ("2021년 3월", "약 30", "-", "", "nan", "1,00"):
        assert parse_quantity(cell) is None


def test_rms_reports_the_mean_true_f1_in_percent():
    predictions = [SHARES, "TITLE | 연도별 점유율\n| 2021 | 2022\nA사 | 30% | 35.5%", ""]
    scores = rms([SHARES] * 3, predictions)
    assert scores["rms_precision"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    assert scores["rms_recall"] == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    assert scores["rms_f1"] == pytest.approx(100 * (1 + 0.75 + 0) / 3)
    assert scores["rms_units_f1"] == pytest.approx(scores["rms_f1"])
    # The cells alone: all four, two of four (precision 1, recall 0.5), none.
    assert scores["rms_cells_f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert scores["title_match"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        rms([SHARES] * 3, predictions[:2])


# ---------------------------------------------------------------------------------------------------------------
# Question answering


def _chartqa_relaxed(target: str, prediction: str) -> bool:
    """ChartQA's rule on bare answers, written out from its definition."""

    def to_float(text):
        try:
            return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
        except ValueError:
            return None

    t, p = to_float(target), to_float(prediction)
    if p is not None and t:
        return abs(p - t) / abs(t) <= 0.05
    return p == t if t == 0 and p is not None else prediction.lower() == target.lower()


BARE_ANSWERS = ["0.25", "25%", "24%", "26.5%", "12", "12.5", "100", "104", "105.5", "0", "0.0", "abc", "ABC", "x"]


def test_relaxed_accuracy_agrees_with_chartqa_on_bare_answers():
    for target in BARE_ANSWERS:
        for prediction in BARE_ANSWERS:
            assert relaxed_correct(target, prediction) == _chartqa_relaxed(target, prediction), (target, prediction)


@pytest.mark.parametrize(
    "reference,prediction,correct",
    [
        ("0.25", "25%", True),
        ("25%", "0.25", True),
        ("30%", "30", False),  # a percentage is a fraction, as in ChartQA
        ("1,000", "1000", True),
        ("1,000명", "1,040명입니다.", True),  # 4% off
        ("1,000명", "1,060명입니다.", False),  # 6% off
        ("서울이(가) 950만 명로 가장 큽니다.", "2021년 기준 서울이 960만 명으로 가장 많습니다.", True),
        ("2021년이(가) 950명로 가장 큽니다.", "2021년입니다.", False),  # no number in 명: the last number, 2021
        ("합계는 1,500명입니다.", "서울 1,000명과 부산 500명을 더하면 1,500명입니다.", True),  # the last one in 명
        ("30.5% 차이가 납니다.", "차이는 30.5%p가 아니라 30.5%입니다", True),
        ("0명입니다.", "0명", True),
        ("0명입니다.", "1명", False),
        ("A사이(가) 더 큽니다.", "a사이(가)  더 큽니다", True),  # text: normalized exact match
        ("A사이(가) 더 큽니다.", "B사이(가) 더 큽니다.", False),
        ("A사이(가) 더 큽니다.", "A사가 더 큽니다.", False),
        ("950명입니다.", "", False),
        ("950명입니다.", "모르겠습니다.", False),
        ("두 값이 같습니다.", "", False),
    ],
)
def test_relaxed_correct_on_korean_answers(reference, prediction, correct):
    assert relaxed_correct(reference, prediction) is correct


def test_find_quantities_reads_units_without_particles():
    assert find_quantities("서울이(가) 950만 명로 가장 큽니다.") == [Quantity(950, "만명")]
    assert find_quantities("2021년이(가) 30%입니다.") == [Quantity(2021, "년"), Quantity(30, "%")]
    assert find_quantities("합계는 1,234.5 명이며, 차이는 -3점입니다") == [Quantity(1234.5, "명"), Quantity(-3, "점")]
    assert find_quantities("A3 모델은 10-20%") == [Quantity(10, ""), Quantity(20, "%")]
    assert find_quantities("숫자가 없습니다") == []


def test_exact_match_and_accuracy_in_percent():
    assert exact_match("950만 명입니다.", " 950만  명입니다")
    assert not exact_match("950만 명입니다.", "950만명입니다.")
    scores = relaxed_accuracy(["25%", "950명입니다.", "A사이(가) 더 큽니다."], ["0.25", "950명입니다.", "B사"])
    assert scores == {"relaxed_accuracy": pytest.approx(200 / 3), "exact_match": pytest.approx(100 / 3)}


# ---------------------------------------------------------------------------------------------------------------
# Descriptions and summaries


def test_rouge_l_counts_korean_words():
    reference, prediction = "서울의 인구는 950만 명으로 가장 많다.", "서울의 인구는 가장 많다"
    # rouge_score's own tokenizer keeps only a-z0-9: Korean text has nothing left, even a perfect answer scores 0.
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score(reference, prediction)["rougeL"].fmeasure == 0
    assert default.score(prediction, prediction)["rougeL"].fmeasure == 0
    assert rouge_l([prediction], [prediction]) == pytest.approx(100.0)
    # Ours: 6 reference words, 4 predicted, LCS 4 -> precision 1, recall 2/3, F 0.8.
    assert korean_words(reference) == ["서울의", "인구는", "950만", "명으로", "가장", "많다"]
    assert rouge_l([reference], [prediction]) == pytest.approx(80.0)
    # Order matters: LCS of (a b c d) and (b a c d) is 3 of 4.
    assert rouge_l(["가 나 다 라"], ["나 가 다 라"]) == pytest.approx(75.0)
    assert rouge_l(["가 나", "가 나"], ["가 나", ""]) == pytest.approx(50.0)


def test_rms_separates_the_title_from_the_cells():
    # SHARES has five datapoints (the title and four cells): its title line alone is one right datapoint of one
    # predicted, F1 2 * 1 * (1/5) / (1 + 1/5) = 1/3, all of it from the title.
    title_only = rms([SHARES], ["TITLE | 연도별 점유율"])
    assert title_only["rms_f1"] == pytest.approx(100 / 3)
    assert title_only["rms_cells_f1"] == 0
    assert title_only["title_match"] == 100
    # The cells right under another title: four of five datapoints, and every cell.
    cells_only = rms([SHARES], [SHARES.replace("연도별 점유율", "지역별 인구")])
    assert cells_only["rms_f1"] == pytest.approx(100 * 0.8)
    assert cells_only["rms_cells_f1"] == pytest.approx(100)
    assert cells_only["title_match"] == 0
    # Titles are read as RMS reads them (lowercased, stripped); two tables without a title match.
    assert rms(["TITLE | Sales\nA | 1"], ["title |  sales \nA | 2"])["title_match"] == 100
    assert rms(["A | 1"], ["A | 1"])["title_match"] == 100


def test_bleu_on_korean_words():
    reference = "서울의 인구는 950만 명으로 가장 많다"
    # The first four of six words: every n-gram precision is 1, the brevity penalty exp(1 - 6/4).
    score, signature = bleu([reference], ["서울의 인구는 950만 명으로"])
    assert score == pytest.approx(100 * math.exp(1 - 6 / 4))
    assert "tok:intl" in signature
    assert bleu([reference], [reference])[0] == pytest.approx(100)
    assert bleu([reference], ["부산"])[0] == pytest.approx(0)


def test_score_task_reports_each_task_metric_with_n():
    assert score_task("table", [SHARES], [SHARES]) == {
        "rms_precision": pytest.approx(100),
        "rms_recall": pytest.approx(100),
        "rms_f1": pytest.approx(100),
        "rms_units_f1": pytest.approx(100),
        "rms_cells_f1": pytest.approx(100),
        "title_match": pytest.approx(100),
        "n": 1,
    }
    assert set(score_task("summary", ["가 나"], ["가 나"])) == {"rouge_l", "bleu", "n"}
    assert set(score_task("qa", ["1"], ["1"])) == {"relaxed_accuracy", "exact_match", "n"}
    with pytest.raises(ValueError, match="Unknown task 'chart'"):
        score_task("chart", ["x"], ["x"])


def test_a_reference_in_decomposed_jamo_scores_as_its_composed_syllables():
    from unicodedata import normalize

    from chartwiz.evaluation.metrics import score_task

    texts = {
        "table": "TITLE | 연도별 점유율\n| 2021 | 2022\n가사 | 30% | 35.5%",
        "qa": "가장 큰 값은 35.5%입니다.",
        "description": "이 차트는 연도별 점유율을 보여 주는 세로 막대형 차트입니다.",
        "summary": "점유율이 해마다 올랐습니다.",
    }
    for task, text in texts.items():
        scores = score_task(task, [normalize("NFD", text)], [text])
        assert scores == score_task(task, [text], [text]), task
        assert all(value == pytest.approx(100.0) for name, value in scores.items() if name != "n"), (task, scores)
