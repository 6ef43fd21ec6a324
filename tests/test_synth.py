import hashlib
import json
import os

from PIL import Image

from dataset_builder.aihub import CHART_TYPE_FOLDERS, table_text
from dataset_builder.synth import generate, make_chart


def tree_digest(root: str) -> str:
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            digest.update(os.path.relpath(os.path.join(folder, name), root).encode())
            with open(os.path.join(folder, name), "rb") as file:
                digest.update(file.read())
    return digest.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    generate(str(tmp_path / "a"), 12, seed=3, progress=False)
    generate(str(tmp_path / "b"), 12, seed=3, num_proc=2, progress=False)
    generate(str(tmp_path / "c"), 12, seed=4, progress=False)
    assert tree_digest(str(tmp_path / "a")) == tree_digest(str(tmp_path / "b"))
    assert tree_digest(str(tmp_path / "a")) != tree_digest(str(tmp_path / "c"))


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
            assert image.format == "JPEG" and image.size == (800, 600)


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
