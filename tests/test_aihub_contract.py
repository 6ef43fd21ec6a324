import pytest

from dataset_builder.aihub import BadRecord, format_value, summary_text, table_text


def annotation(*blocks, chart_main="세로 막대형"):
    return {"image": [{"filename": "x.jpg"}], "metadata": {"chart_main": chart_main}, "annotations": list(blocks)}


def block(title="제목", unit="", legend=(), x_axis=(), y_axis=(), data_label=()):
    return {
        "title": title,
        "unit": unit,
        "legend": list(legend),
        "axis_label": {"x_axis": list(x_axis), "y_axis": list(y_axis)},
        "data_label": list(data_label),
    }


def test_worked_example():
    record = annotation(
        block("연도별 점유율", "%", ["A사", "B사"], ["2021", "2022", "2023"], [], [[30, 35.5, 40], [70, 64.5, 60]])
    )
    assert (
        table_text(record)
        == "TITLE | 연도별 점유율\n| 2021 | 2022 | 2023\nA사 | 30% | 35.5% | 40%\nB사 | 70% | 64.5% | 60%"
    )


def test_no_legend_one_line_per_category_with_unit():
    record = annotation(
        block("지역별 인구", "만 명", [], [], ["서울", "부산", "대구"], [[950, 340, 240]]), chart_main="가로 막대형"
    )
    assert table_text(record) == "TITLE | 지역별 인구\n서울 | 950만 명\n부산 | 340만 명\n대구 | 240만 명"


def test_flat_data_label_means_one_row():
    assert table_text(annotation(block(x_axis=["a", "b"], data_label=[1, 2]))) == "TITLE | 제목\na | 1\nb | 2"


@pytest.mark.parametrize("by", ["metadata", "folder"])
def test_horizontal_bars_take_categories_from_the_y_axis(by):
    record = annotation(
        block(x_axis=["0", "50", "100"], y_axis=["가", "나", "다"], data_label=[[1, 2, 3]]),
        chart_main="가로 막대형" if by == "metadata" else "기타",
    )
    folder = "horizontal bar_standard" if by == "folder" else None
    assert table_text(record, folder) == "TITLE | 제목\n가 | 1\n나 | 2\n다 | 3"
    assert (
        table_text(annotation(block(x_axis=["0", "50", "100"], y_axis=["가", "나", "다"], data_label=[[1, 2, 3]])))
        == "TITLE | 제목\n0 | 1\n50 | 2\n100 | 3"
    )


def test_other_axis_is_used_when_the_primary_does_not_fit():
    record = annotation(block(x_axis=["단위"], y_axis=["가", "나"], data_label=[[1, 2]]))
    assert table_text(record) == "TITLE | 제목\n가 | 1\n나 | 2"


@pytest.mark.parametrize("data_label", [[[30, 50, 20]], [[30], [50], [20]]], ids=["one-row", "row-per-slice"])
def test_pie_in_both_layouts(data_label):
    record = annotation(block("점유율", "%", ["A", "B", "C"], [], [], data_label), chart_main="원형")
    assert table_text(record) == "TITLE | 점유율\nA | 30%\nB | 50%\nC | 20%"


def test_multi_block_mix_writes_the_header_once_and_each_unit():
    record = annotation(
        block("매출과 이익률", "억 원", ["매출"], ["2021", "2022"], [], [[100, 120]]),
        block("이익률", "%", ["이익률"], ["2021", "2022"], [], [[5.5, 7]]),
        block("비고", "건", [], ["x", "y"], [], [[1, 2]]),
    )
    assert table_text(record) == (
        "TITLE | 매출과 이익률\n| 2021 | 2022\n매출 | 100억 원 | 120억 원\n이익률 | 5.5% | 7%\nx | 1건\ny | 2건"
    )


def test_values_are_written_as_given():
    assert format_value(12, "w") == "12"
    assert format_value(12.0, "w") == "12.0"
    assert format_value(12.5, "w") == "12.5"
    assert format_value(0.1 + 0.2, "w") == "0.30000000000000004"
    assert format_value(" 1,234 ", "w") == "1,234"
    assert format_value("7.50", "w") == "7.50"


@pytest.mark.parametrize("value", [None, True, "abc", "", float("nan"), float("inf"), [1], {"v": 1}])
def test_non_numbers_are_bad_records(value):
    with pytest.raises(BadRecord, match="w"):
        format_value(value, "w")


def test_pipes_newlines_and_whitespace_in_cells():
    record = annotation(block(" 제목|부제\n ", " % ", ["A|B ", "C\nD"], [" x ", "y|z"], [], [[1, 2], [3, 4]]))
    assert table_text(record) == "TITLE | 제목 부제\n| x | y z\nA B | 1% | 2%\nC D | 3% | 4%"
    assert all(line == line.rstrip() for line in table_text(record).split("\n"))


@pytest.mark.parametrize(
    "bad_block, reason",
    [
        (block(x_axis=["a", "b", "c"], data_label=[[1, 2]]), "do not fit the categories"),
        (block(legend=["A", "B"], x_axis=["a", "b"], data_label=[[1, 2]]), "1 value rows for 2 legend entries"),
        (block(x_axis=["a", "b"], data_label=[[1, 2], [3, 4]]), "no legend to name them"),
        (block(legend=["A", "B", "C"], data_label=[[1, 2]]), "do not pair with 3 legend entries"),
        (block(data_label=[[1, 2]]), "neither categories nor a legend"),
        (block(x_axis=["a", "b"], data_label=[[1, 2], [3]]), "different lengths"),
        (block(x_axis=["a"], data_label=[]), "data_label is empty"),
        (block(x_axis=["a", "b"], data_label=[[1, "x"]]), "is not a number"),
        ({k: v for k, v in block(x_axis=["a"], data_label=[[1]]).items() if k != "legend"}, "missing field 'legend'"),
        ({"title": "t", "unit": "", "legend": [], "axis_label": {"x_axis": ["a"]}, "data_label": [[1]]}, "y_axis"),
    ],
)
def test_values_that_do_not_fit_are_bad_records(bad_block, reason):
    with pytest.raises(BadRecord, match=reason):
        table_text(annotation(bad_block))


def test_record_level_fields():
    with pytest.raises(BadRecord, match="annotations is empty"):
        table_text(annotation())
    with pytest.raises(BadRecord, match="missing field 'annotations'"):
        table_text({"image": []})


def test_summary_joined_with_single_spaces():
    assert summary_text(["첫 문장. ", " 둘째 문장.", ""]) == "첫 문장. 둘째 문장."
    assert summary_text(" 하나의 문자열 ") == "하나의 문자열"
    assert summary_text(None) == ""
