import hashlib
import json
import os

import pytest
from PIL import Image

from dataset_builder.aihub import CHART_TYPE_FOLDERS, table_text
from dataset_builder.synth import CHART_SIZE, described_chart_type, generate, make_chart


def tree_digest(root: str) -> str:
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            digest.update(os.path.relpath(os.path.join(folder, name), root).encode())
            with open(os.path.join(folder, name), "rb") as file:
                digest.update(file.read())
    return digest.hexdigest()


@pytest.mark.slow
def test_deterministic_for_a_seed(tmp_path):
    generate(str(tmp_path / "a"), 12, seed=3, progress=False)
    generate(str(tmp_path / "b"), 12, seed=3, num_proc=2, progress=False)
    generate(str(tmp_path / "c"), 12, seed=4, progress=False)
    assert tree_digest(str(tmp_path / "a")) == tree_digest(str(tmp_path / "b"))
    assert tree_digest(str(tmp_path / "a")) != tree_digest(str(tmp_path / "c"))


@pytest.mark.slow
def test_every_chart_type_in_both_splits_with_the_contract_schema(tmp_path):
    root = str(tmp_path / "synth")
    generate(root, 40, seed=0, test_fraction=0.25, progress=False)
    for split in ("train", "test"):
        for folder in CHART_TYPE_FOLDERS:
            texts = os.listdir(os.path.join(root, split, "text_data", f"text_{folder}"))
            images = os.listdir(os.path.join(root, split, "img_data", f"img_{folder}"))
            assert texts and len(texts) == len(images), (split, folder)
            with open(os.path.join(root, split, "text_data", f"text_{folder}", texts[0]), encoding="utf-8") as f:
                annotation = json.load(f)
            assert {"image", "metadata", "annotations", "description", "summary"} <= set(annotation)
            image = Image.open(
                os.path.join(root, split, "img_data", f"img_{folder}", annotation["image"][0]["filename"])
            )
            assert image.format == "JPEG" and image.size == CHART_SIZE
            assert [annotation["image"][0][key] for key in ("width", "height")] == list(CHART_SIZE)


def test_schema_variety_and_tables_agree_with_the_contract():
    charts = [make_chart(index, seed=9, test_fraction=0.1) for index in range(200)]
    kinds = {chart.chart_type: chart for chart in charts}
    assert len(kinds) == 10
    assert any(len(chart.annotation["annotations"]) > 1 for chart in charts), "multi-block mixes"
    pies = [chart.annotation["annotations"][0]["data_label"] for chart in charts if chart.chart_type == "pie"]
    assert any(len(rows) == 1 for rows in pies) and any(len(rows) > 1 for rows in pies), "both pie layouts"
    horizontal = kinds["horizontal_bar"].annotation
    assert horizontal["metadata"]["chart_main"] == "가로 막대형"
    assert (
        horizontal["annotations"][0]["axis_label"]["y_axis"]
        and not horizontal["annotations"][0]["axis_label"]["x_axis"]
    )
    values = [
        v
        for c in charts
        for b in c.annotation["annotations"]
        for row in b["data_label"]
        for v in (row if isinstance(row, list) else [row])
    ]
    assert any(isinstance(v, str) for v in values) and any(isinstance(v, float) for v in values)
    assert any(isinstance(v, int) for v in values)
    for chart in charts:
        assert table_text(chart.annotation) == chart.expected_table, chart.stem


def test_charts_stay_small_enough_to_print_every_value_legibly():
    charts = [make_chart(index, seed=5, test_fraction=0.1) for index in range(300)]
    for chart in charts:
        blocks = chart.annotation["annotations"]
        rows = [row if isinstance(row, list) else [row] for b in blocks for row in b["data_label"]]
        categories = blocks[0]["axis_label"]["x_axis"] or blocks[0]["axis_label"]["y_axis"] or blocks[0]["legend"]
        assert 3 <= len(categories) <= 4, chart.stem
        assert len(blocks[0]["legend"]) <= (4 if chart.chart_type == "pie" else 2), chart.stem
        if chart.chart_type.endswith("_100") or chart.chart_type == "pie":
            # Every segment is wide enough to hold its printed share.
            assert min(float(value) for row in rows for value in row) >= 8, chart.stem
        # The description names the type in the words `described_chart_type` reads back.
        assert described_chart_type(chart.annotation["description"]) == chart.chart_type
    assert described_chart_type("이 차트는 '지역별 인구'을(를) 나타낸 막대 차트입니다.") is None
    assert described_chart_type("표를 만들 수 없습니다") is None


def test_qa_answers_are_computed_from_the_data():
    chart = make_chart(3, seed=2, test_fraction=0.1)
    block = chart.annotation["annotations"][0]
    rows = block["data_label"] if isinstance(block["data_label"][0], list) else [block["data_label"]]
    largest = max(float(v) for row in rows for v in row)
    turns = chart.qa["conversations"]
    assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
    assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert len(turns) >= 6, "multi-turn with follow-ups"
    shown = [v for row in rows for v in row if float(v) == largest][0]
    assert str(shown) in turns[1]["value"]


def charts_in(root: str) -> dict[str, list[str]]:
    return {
        split: sorted(
            name
            for folder in CHART_TYPE_FOLDERS
            for name in os.listdir(os.path.join(root, split, "img_data", f"img_{folder}"))
        )
        for split in ("train", "test")
    }


@pytest.mark.slow
def test_a_used_output_folder_is_refused_unless_overwrite(tmp_path, capsys):
    from chartwiz.commands.cli import main

    root = str(tmp_path / "synth")
    generate(root, 12, seed=0, progress=False)
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        generate(root, 5, seed=0, progress=False)
    assert sum(len(names) for names in charts_in(root).values()) == 12
    assert main(["synth", root, "--n", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth", root, "--n", "5", "--overwrite"]) == 0
    assert sum(len(names) for names in charts_in(root).values()) == 5
    # Exactly the files of the same command into a new folder: nothing of the 12 charts before.
    fresh = str(tmp_path / "fresh")
    assert main(["synth", fresh, "--n", "5"]) == 0

    def tree(top):
        return sorted(os.path.relpath(os.path.join(d, name), top) for d, _, names in os.walk(top) for name in names)

    assert tree(root) == tree(fresh)
    for name in ("gpt_qa.jsonl", "synth_manifest.jsonl"):
        assert len(open(os.path.join(root, name), encoding="utf-8").readlines()) == 5


def test_overwrite_never_clears_a_folder_synth_did_not_write(tmp_path):
    other = tmp_path / "my-data"
    (other / "train").mkdir(parents=True)
    (other / "train" / "keep.json").write_text("{}")
    with pytest.raises(ValueError, match="synth_manifest.jsonl"):
        generate(str(other), 5, overwrite=True, progress=False)
    assert (other / "train" / "keep.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 5, 10])
def test_small_sets_fill_both_splits(tmp_path, n):
    root = str(tmp_path / "synth")
    generate(root, n, seed=0, progress=False)
    charts = charts_in(root)
    assert charts["train"] and charts["test"]
    assert len(charts["train"]) + len(charts["test"]) == n
    assert "S_0_0000000_vertical_bar.jpg" in charts["test"]


def test_a_single_chart_goes_to_train(tmp_path):
    root = str(tmp_path / "synth")
    generate(root, 1, seed=0, progress=False)
    assert charts_in(root) == {"train": ["S_0_0000000_vertical_bar.jpg"], "test": []}


@pytest.mark.parametrize("test_fraction", [-0.1, 0.8, 1.0])
def test_test_fractions_that_leave_a_split_empty_are_refused(tmp_path, test_fraction):
    with pytest.raises(ValueError, match="--test-fraction"):
        generate(str(tmp_path / "synth"), 30, test_fraction=test_fraction, progress=False)
    assert not (tmp_path / "synth").exists()


@pytest.mark.slow
def test_overwrite_removes_what_synth_wrote_and_nothing_a_user_added(tmp_path):
    from dataset_builder.aihub import image_dir, text_dir

    root = str(tmp_path / "synth")
    generate(root, 12, seed=0, progress=False)
    mine = [
        os.path.join(image_dir(root, "train", "pie_standard"), "mine.jpg"),
        os.path.join(text_dir(root, "test", "line_standard"), "mine.json"),
        os.path.join(root, "train", "notes.txt"),
    ]
    for path in mine:
        with open(path, "w", encoding="utf-8") as file:
            file.write("mine")
    # A chart a killed run rendered before its manifest line was written is synth's too.
    orphan = os.path.join(image_dir(root, "train", "pie_standard"), "S_0_0000099_pie.jpg")
    open(orphan, "wb").close()
    generate(root, 5, seed=1, overwrite=True, progress=False)
    assert all(os.path.isfile(path) for path in mine)
    assert not os.path.exists(orphan)
    charts = charts_in(root)
    assert sorted(name for names in charts.values() for name in names if name.startswith("S_")) == sorted(
        name for names in charts.values() for name in names if name.startswith("S_1_")
    )
    assert sum(name.startswith("S_1_") for names in charts.values() for name in names) == 5
