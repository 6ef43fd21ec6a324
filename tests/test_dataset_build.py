import glob
import io
import json
import os
import shutil
from types import SimpleNamespace

import pytest
from datasets import Image, load_dataset

from dataset_builder.aihub import CHART_TYPE_FOLDERS, image_dir, text_dir
from dataset_builder.build import build_dataset
from dataset_builder.rows import INSTRUCTIONS
from dataset_builder.synth import generate

from .conftest import ctrl_c_when, draw_chart


def write_chart(root, split, folder, stem, annotation=None, image="ok", raw_json=None):
    os.makedirs(text_dir(root, split, folder), exist_ok=True)
    os.makedirs(image_dir(root, split, folder), exist_ok=True)
    if image == "ok":
        draw_chart(160, 120).save(os.path.join(image_dir(root, split, folder), f"{stem}.jpg"))
    elif image == "truncated":
        buffer = io.BytesIO()
        draw_chart(320, 240).save(buffer, format="JPEG")
        with open(os.path.join(image_dir(root, split, folder), f"{stem}.jpg"), "wb") as file:
            file.write(buffer.getvalue()[:300])
    if annotation is None:
        annotation = {
            "image": [{"filename": f"{stem}.jpg"}],
            "metadata": {"chart_main": "세로 막대형"},
            "annotations": [
                {
                    "title": f"{stem} 제목",
                    "unit": "개",
                    "legend": [],
                    "axis_label": {"x_axis": ["가", "나"], "y_axis": []},
                    "data_label": [[1, 2]],
                }
            ],
            "description": f"{stem} 설명입니다.",
            "summary": [f"{stem} 요약.", "둘째 문장."],
        }
    with open(os.path.join(text_dir(root, split, folder), f"{stem}.json"), "w", encoding="utf-8") as file:
        file.write(raw_json if raw_json is not None else json.dumps(annotation, ensure_ascii=False))
    return annotation


@pytest.fixture()
def messy_tree(tmp_path):
    """A small AI-Hub tree with one example of each kind of bad record."""
    root = str(tmp_path / "aihub")
    bar = "vertical bar_standard"
    write_chart(root, "train", bar, "good1")
    good2 = write_chart(
        root,
        "train",
        "pie_standard",
        "good2",
        annotation={
            "image": [{"filename": "good2.jpg"}],
            "metadata": {"chart_main": "원형"},
            "annotations": [
                {
                    "title": "비율",
                    "unit": "%",
                    "legend": ["A", "B"],
                    "axis_label": {"x_axis": [], "y_axis": []},
                    "data_label": [[40], [60]],
                }
            ],
            "description": "",
            "summary": "파이 요약.",
        },
    )
    write_chart(root, "train", bar, "broken_json", raw_json="{not json")
    write_chart(root, "train", bar, "no_image_file", image=None)
    write_chart(root, "train", bar, "truncated_image", image="truncated")
    missing_field = write_chart(root, "train", bar, "missing_field")
    del missing_field["annotations"][0]["legend"]
    write_chart(root, "train", bar, "missing_field", annotation=missing_field)
    misfit = write_chart(root, "train", bar, "misfit")
    misfit["annotations"][0]["data_label"] = [[1, 2, 3]]
    write_chart(root, "train", bar, "misfit", annotation=misfit)
    write_chart(root, "test", "line_standard", "good3")
    os.makedirs(os.path.join(root, "train", "text_data", "text_unknown_type"))

    qa = [
        {
            "id": "conv1",
            "image": "good1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\n가의 값은?"},
                {"from": "gpt", "value": "1개입니다."},
                {"from": "human", "value": "나는?"},
                {"from": "gpt", "value": "2개입니다."},
                {"from": "human", "value": "합은?"},
            ],
        },
        {
            "id": "conv2",
            "image": "good3.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\n제목은?"},
                {"from": "gpt", "value": "good3 제목입니다."},
            ],
        },
        {
            "id": "conv3",
            "image": "nowhere.jpg",
            "conversations": [{"from": "human", "value": "값?"}, {"from": "gpt", "value": "1"}],
        },
        {
            "id": "conv4",
            "image": "good2.jpg",
            "conversations": [{"from": "gpt", "value": "순서가 틀림"}, {"from": "human", "value": "?"}],
        },
    ]
    gpt_file = tmp_path / "qa.jsonl"
    gpt_file.write_text(
        "\n".join(json.dumps(item, ensure_ascii=False) for item in qa) + "\n{broken\n", encoding="utf-8"
    )
    return root, str(gpt_file), good2


def test_bad_records_are_skipped_reported_and_counted(messy_tree, tmp_path):
    root, gpt_file, _ = messy_tree
    out = str(tmp_path / "out")
    report = build_dataset(root, out, gpt_sources=[gpt_file])
    counts = report["counts"]
    assert counts["pretrain"]["train"] == {**counts["pretrain"]["train"], "read": 7, "written": 2, "skipped": 5}
    assert counts["pretrain"]["test"]["written"] == 1
    # 7 charts x 3 tasks; good2 has no description
    assert counts["finetune"]["train"] == {**counts["finetune"]["train"], "read": 21, "written": 5, "skipped": 16}
    # conv1: 2 answered turns + 1 unanswered; conv3: image nowhere; conv4: wrong order; one broken line
    assert counts["gpt"]["train"] == {**counts["gpt"]["train"], "read": 6, "written": 2, "skipped": 4}
    assert counts["gpt"]["test"] == {**counts["gpt"]["test"], "read": 1, "written": 1, "skipped": 0}

    reasons = {
        (entry["config"], os.path.basename(entry["source"]), entry.get("task")): entry["reason"]
        for entry in report["skipped"]
    }
    assert "JSON does not parse" in reasons[("pretrain", "broken_json.json", None)]
    assert "is missing" in reasons[("pretrain", "no_image_file.json", None)]
    assert "does not decode" in reasons[("pretrain", "truncated_image.json", None)]
    assert "missing field 'legend'" in reasons[("pretrain", "missing_field.json", None)]
    assert "do not fit" in reasons[("pretrain", "misfit.json", None)]
    assert reasons[("finetune", "good2.json", "description")] == "empty description"
    gpt_reasons = [entry["reason"] for entry in report["skipped"] if entry["config"] == "gpt"]
    assert any("neither split" in reason for reason in gpt_reasons)
    assert any("does not follow a question from 'human'" in reason for reason in gpt_reasons)
    assert any("no answer" in reason for reason in gpt_reasons)
    assert any("JSON does not parse" in reason for reason in gpt_reasons)
    assert report["ignored_folders"]["train"] == ["text_unknown_type"]

    on_disk = json.load(open(os.path.join(out, "build_report.json"), encoding="utf-8"))
    assert on_disk["counts"]["finetune"]["train"]["skipped"] == 16


def test_load_dataset_for_every_config(messy_tree, tmp_path):
    root, gpt_file, good2 = messy_tree
    out = str(tmp_path / "out")
    build_dataset(root, out, gpt_sources=[gpt_file], num_proc=1)
    pretrain = load_dataset(out, "pretrain")
    assert sorted(pretrain["train"]["id"]) == ["good1", "good2"]
    row = pretrain["train"].filter(lambda r: r["id"] == "good2")[0]
    assert row["image"].size == (160, 120)
    assert row["chart_type"] == "pie" and row["task"] == "table"
    assert row["prompt"] == [{"role": "user", "content": ""}]
    assert row["completion"] == [{"role": "assistant", "content": "TITLE | 비율\nA | 40%\nB | 60%"}]

    finetune = load_dataset(out, "finetune")
    by_id = {r["id"]: r for r in finetune["train"]}
    assert set(by_id) == {"good1-table", "good1-description", "good1-summary", "good2-table", "good2-summary"}
    assert (
        by_id["good1-table"]["prompt"][0]["content"] == INSTRUCTIONS["table"][0] == "이 차트를 테이블 정보로 변경해줘."
    )
    assert by_id["good1-summary"]["completion"][0]["content"] == "good1 요약. 둘째 문장."
    assert by_id["good1-description"]["task"] == "description"

    gpt = load_dataset(out, "gpt")
    turns = {r["id"]: r for r in gpt["train"]}
    assert set(turns) == {"conv1-1", "conv1-2"}
    assert turns["conv1-1"]["prompt"] == [{"role": "user", "content": "가의 값은?"}]
    assert turns["conv1-2"]["prompt"] == [
        {"role": "user", "content": "가의 값은?"},
        {"role": "assistant", "content": "1개입니다."},
        {"role": "user", "content": "나는?"},
    ]
    assert turns["conv1-2"]["completion"] == [{"role": "assistant", "content": "2개입니다."}]
    assert gpt["test"][0]["id"] == "conv2-1" and gpt["test"][0]["chart_type"] == "line"

    everything = load_dataset(out, "all")
    assert len(everything["train"]) == len(finetune["train"]) + len(gpt["train"])
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "config_name: all" in card and "absolute path" in card


def test_images_are_stored_once_locally(messy_tree, tmp_path):
    import pyarrow.parquet as pq

    root, gpt_file, _ = messy_tree
    out = str(tmp_path / "out")
    report = build_dataset(root, out, configs=["finetune"])
    (shard,) = report["counts"]["finetune"]["train"]["files"]
    assert shard.startswith("finetune/train-00000-of-00001-") and shard.endswith(".parquet")
    table = pq.read_table(os.path.join(out, shard))
    images = table.column("image").to_pylist()
    assert all(image["bytes"] is None and os.path.isabs(image["path"]) for image in images)


@pytest.mark.slow
def test_synthetic_round_trip_regenerates_every_table(tmp_path):
    raw = str(tmp_path / "synth")
    generate(raw, 30, seed=5, test_fraction=0.2, progress=False)
    manifest = [json.loads(line) for line in open(os.path.join(raw, "synth_manifest.jsonl"), encoding="utf-8")]
    out = str(tmp_path / "out")
    report = build_dataset(raw, out, gpt_sources=[os.path.join(raw, "gpt_qa.jsonl")], num_proc=2)
    assert report["skipped"] == []
    pretrain = load_dataset(out, "pretrain")
    built = {
        row["id"]: (row["completion"][0]["content"], row["chart_type"])
        for split in pretrain.values()
        for row in split.select_columns(["id", "completion", "chart_type"])
    }
    assert len(built) == len(manifest) == 30
    for chart in manifest:
        assert built[chart["stem"]] == (chart["table"], chart["chart_type"]), chart["stem"]
    assert {row["chart_type"] for row in manifest if row["split"] == "test"} == set(CHART_TYPE_FOLDERS.values())
    gpt = load_dataset(out, "gpt")
    assert (
        sum(len(split) for split in gpt.values())
        == report["counts"]["gpt"]["train"]["read"] + report["counts"]["gpt"]["test"]["read"]
    )


@pytest.mark.slow
def test_num_proc_gives_the_same_rows(tmp_path):
    raw = str(tmp_path / "synth")
    generate(raw, 20, seed=1, progress=False)
    rows = []
    for num_proc in (1, 2):
        out = str(tmp_path / f"out{num_proc}")
        build_dataset(raw, out, configs=["finetune"], num_proc=num_proc)
        dataset = load_dataset(out, "finetune")["train"].select_columns(["id", "prompt", "completion"])
        rows.append(sorted(dataset, key=lambda row: row["id"]))
    assert rows[0] == rows[1]


def fake_hub(monkeypatch, tmp_path, repo_id: str):
    """
    A Hub dataset repo in a local folder, behind huggingface_hub's own boundary: `HfApi`'s calls that `push_to_hub`
    and `push_dataset` make, and the `HfFileSystem` through which `datasets` reads the repo's card and files. Returns
    the folder and the log of the calls.
    """
    import datasets.dataset_dict
    import huggingface_hub
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete

    sha = "0" * 40
    root = tmp_path / "hub"
    # `datasets` reads the repo at `datasets/<repo_id>@<sha>` of the file system it is given.
    repo = root / "datasets" / f"{repo_id}@{sha}"
    repo.mkdir(parents=True)
    calls = {"create_repo": [], "preuploaded": {}, "commits": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))

    def repo_info(self, repo_id, **kwargs):
        return SimpleNamespace(id=repo_id, sha=sha)

    def preupload_lfs_files(self, repo_id, additions, **kwargs):
        # The file an addition names is deleted once uploaded: keep its bytes, as the Hub does.
        for addition in additions:
            with addition.as_file() as file:
                calls["preuploaded"][addition.path_in_repo] = file.read()

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        written, deleted = [], []
        for operation in operations:
            target = repo / operation.path_in_repo
            if isinstance(operation, CommitOperationAdd):
                content = calls["preuploaded"].pop(operation.path_in_repo, None)
                if content is None:
                    with operation.as_file() as file:
                        content = file.read()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                written.append(operation.path_in_repo)
            elif isinstance(operation, CommitOperationDelete):
                target.unlink()
                deleted.append(operation.path_in_repo)
        calls["commits"].append({"message": commit_message, "written": written, "deleted": deleted})
        url = f"https://huggingface.co/datasets/{repo_id}/commit/{len(calls['commits'])}"
        return CommitInfo(commit_url=url, commit_message=commit_message, commit_description="", oid=sha)

    for name, method in [
        ("create_repo", create_repo),
        ("repo_info", repo_info),
        ("preupload_lfs_files", preupload_lfs_files),
        ("create_commit", create_commit),
    ]:
        monkeypatch.setattr(huggingface_hub.HfApi, name, method)
    monkeypatch.setattr(
        datasets.dataset_dict, "HfFileSystem", lambda **kwargs: DirFileSystem(path=str(root), fs=LocalFileSystem())
    )
    return repo, calls


@pytest.mark.slow
def test_push_uploads_every_config_with_images_embedded_and_our_card(messy_tree, tmp_path, monkeypatch):
    from huggingface_hub import DatasetCard

    root, gpt_file, _ = messy_tree
    out = str(tmp_path / "out")
    uploaded, calls = fake_hub(monkeypatch, tmp_path, "org/charts")
    # Shards of about two charts: several for finetune's 5 rows (3 charts' worth), one for the 1- and 2-row splits
    (chart,) = glob.glob(os.path.join(root, "**", "good1.jpg"), recursive=True)
    shard_size = int(2.5 * os.path.getsize(chart))
    report = build_dataset(
        root, out, gpt_sources=[gpt_file], push_to_hub="org/charts", private=True, max_shard_size=shard_size
    )
    assert calls["create_repo"] == [("org/charts", {"repo_type": "dataset", "private": True, "exist_ok": True})]
    # Our card and report first, then one push_to_hub commit per config (`all` reuses finetune's and gpt's shards)
    messages = [commit["message"] for commit in calls["commits"]]
    assert messages[0].startswith("Upload the ChartWiz AI-Hub chart dataset card")
    assert calls["commits"][0]["written"] == ["README.md", "build_report.json"]
    assert [m.split()[2] for m in messages[1:]] == ["pretrain", "finetune", "gpt"]
    assert not calls["preuploaded"], "every preuploaded shard was committed"

    shards = sorted(str(path.relative_to(uploaded)) for path in uploaded.rglob("*.parquet"))
    assert {path.split("/")[0] for path in shards} == {"pretrain", "finetune", "gpt"}
    finetune_train = [path for path in shards if path.startswith("finetune/train-")]
    assert len(finetune_train) > 1 and finetune_train[0].endswith(f"-of-{len(finetune_train):05d}.parquet"), shards

    card = DatasetCard.load(uploaded / "README.md")
    configs = {entry["config_name"]: entry for entry in card.data.to_dict()["configs"]}
    assert set(configs) == {"pretrain", "finetune", "gpt", "all"} and configs["finetune"].get("default") is True
    assert configs["pretrain"]["data_files"] == [
        {"split": "train", "path": "pretrain/train-*"},
        {"split": "test", "path": "pretrain/test-*"},
    ]
    assert {"finetune/train-*.parquet", "gpt/train-*.parquet"} <= {
        path for entry in configs["all"]["data_files"] for path in entry["path"]
    }
    assert {info["config_name"] for info in card.data.to_dict()["dataset_info"]} >= {"pretrain", "finetune", "gpt"}
    assert card.data.language == ["ko"] and card.data.pretty_name == "ChartWiz AI-Hub charts"
    assert "## Columns" in card.text and "## Counts" in card.text and "The images are embedded" in card.text
    hub_report = json.loads((uploaded / "build_report.json").read_text(encoding="utf-8"))
    assert hub_report["counts"]["finetune"]["train"]["written"] == report["counts"]["finetune"]["train"]["written"]
    assert hub_report["counts"]["finetune"]["train"]["files"] == ["finetune/train-*.parquet"]
    assert len(hub_report["skipped"]) == len(report["skipped"])

    shutil.rmtree(root)  # the uploaded shards must not need the raw tree
    finetune = load_dataset(str(uploaded), "finetune")
    assert finetune["train"].num_rows == 5 and finetune["train"][0]["image"].size == (160, 120)
    every = load_dataset(str(uploaded), "all")
    gpt = load_dataset(str(uploaded), "gpt")
    assert every["train"].num_rows == finetune["train"].num_rows + gpt["train"].num_rows


@pytest.mark.slow
def test_a_shard_size_below_one_row_stops_the_push_before_anything_is_uploaded(messy_tree, tmp_path, monkeypatch):
    root, gpt_file, _ = messy_tree
    out = str(tmp_path / "out")
    _, calls = fake_hub(monkeypatch, tmp_path, "org/charts")
    (chart,) = glob.glob(os.path.join(root, "**", "good1.jpg"), recursive=True)
    too_small = os.path.getsize(chart) // 2
    with pytest.raises(ValueError, match=rf"max_shard_size {too_small} .* smaller than a row of pretrain/train"):
        build_dataset(root, out, gpt_sources=[gpt_file], push_to_hub="org/charts", max_shard_size=too_small)
    assert calls == {"create_repo": [], "preuploaded": {}, "commits": []}
    # The build itself is whole and kept: only the push was refused.
    assert load_dataset(out, "finetune")["train"].num_rows == 5


def test_a_shard_size_that_is_not_a_size_stops_the_build_before_its_work(tmp_path):
    write_chart(str(tmp_path / "tree"), "train", "line_standard", "a")
    for size in ("lots", "12 parsecs", 0):
        with pytest.raises(ValueError, match="max_shard_size"):
            build_dataset(
                str(tmp_path / "tree"),
                str(tmp_path / "out"),
                configs=["pretrain"],
                push_to_hub="o/c",
                max_shard_size=size,
            )
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        build_dataset(str(tmp_path / "missing"), str(tmp_path / "out"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="train/text_data"):
        build_dataset(str(tmp_path / "empty"), str(tmp_path / "out"))
    write_chart(str(tmp_path / "tree"), "train", "line_standard", "a")
    with pytest.raises(ValueError, match="--gpt"):
        build_dataset(str(tmp_path / "tree"), str(tmp_path / "out"), configs=["gpt"])
    with pytest.raises(ValueError, match="Unknown configs"):
        build_dataset(str(tmp_path / "tree"), str(tmp_path / "out"), configs=["nope"])


@pytest.mark.slow
def test_gpt_as_a_json_array_with_several_processes(tmp_path):
    raw = str(tmp_path / "synth")
    generate(raw, 20, seed=2, progress=False)
    with open(os.path.join(raw, "gpt_qa.jsonl"), encoding="utf-8") as file:
        conversations = [json.loads(line) for line in file]
    array_file = tmp_path / "qa.json"
    array_file.write_text(json.dumps(conversations, ensure_ascii=False), encoding="utf-8")
    report = build_dataset(raw, str(tmp_path / "out"), gpt_sources=[str(array_file)], configs=["gpt"], num_proc=2)
    turns = sum(len(conversation["conversations"]) // 2 for conversation in conversations)
    written = sum(counts["written"] for counts in report["counts"]["gpt"].values())
    assert written == turns and report["skipped"] == []
    ids = [row["id"] for split in load_dataset(str(tmp_path / "out"), "gpt").values() for row in split]
    assert len(ids) == len(set(ids)) == turns


# Bad records that must neither end the build nor reach outside the tree.


def one_chart_tree(root, value, stem="c1"):
    """A tree with one vertical bar chart whose first value is `value` (same byte length for same-width values)."""
    annotation = write_chart(root, "train", "vertical bar_standard", stem)
    annotation["annotations"][0]["data_label"] = [[value, 2]]
    write_chart(root, "train", "vertical bar_standard", stem, annotation=annotation)
    return root


def test_non_utf8_jsonl_lines_are_bad_records(messy_tree, tmp_path):
    root, gpt_file, _ = messy_tree
    lines = open(gpt_file, "rb").read().split(b"\n")
    mixed = tmp_path / "mixed.jsonl"
    # A line in EUC-KR (a common Korean encoding) between good UTF-8 lines.
    mixed.write_bytes(b"\n".join([lines[0], '{"id": "깨짐"}'.encode("euc-kr"), *lines[1:]]))
    report = build_dataset(root, str(tmp_path / "out"), gpt_sources=[str(mixed)], configs=["gpt"], num_proc=2)
    assert report["counts"]["gpt"]["train"] == {**report["counts"]["gpt"]["train"], "read": 7, "written": 2}
    assert report["counts"]["gpt"]["test"]["written"] == 1
    reasons = {entry["source"]: entry["reason"] for entry in report["skipped"]}
    assert "not UTF-8" in reasons[f"{mixed}:2"]


@pytest.mark.slow
@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000)], ids=["bomb-error", "bomb-warning"])
def test_decompression_bomb_is_a_bad_record(tmp_path, size):
    from PIL import Image as PILImage

    root = str(tmp_path / "raw")
    one_chart_tree(root, 70)
    annotation = write_chart(root, "train", "vertical bar_standard", "bomb", image=None)
    annotation["image"][0]["filename"] = "bomb.png"
    write_chart(root, "train", "vertical bar_standard", "bomb", annotation=annotation, image=None)
    PILImage.new("1", size).save(os.path.join(image_dir(root, "train", "vertical bar_standard"), "bomb.png"))
    report = build_dataset(root, str(tmp_path / "out"), configs=["pretrain"])
    assert report["counts"]["pretrain"]["train"] == {**report["counts"]["pretrain"]["train"], "written": 1}
    (entry,) = report["skipped"]
    assert entry["source"].endswith("bomb.json") and "pixels" in entry["reason"]


def test_image_paths_outside_the_tree_are_bad_records(messy_tree, tmp_path):
    root, _, _ = messy_tree
    outside = tmp_path / "outside"
    outside.mkdir()
    draw_chart(160, 120).save(outside / "secret.jpg")
    inside = os.path.join(image_dir(root, "train", "vertical bar_standard"), "good1.jpg")
    bar = "vertical bar_standard"
    for stem, filename in [("absolute", str(outside / "secret.jpg")), ("dotdot", "../../../../outside/secret.jpg")]:
        annotation = write_chart(root, "train", bar, stem, image=None)
        annotation["image"][0]["filename"] = filename
        write_chart(root, "train", bar, stem, annotation=annotation, image=None)
    turns = [{"from": "human", "value": "<image>\n값은?"}, {"from": "gpt", "value": "1개입니다."}]
    conversations = [
        {"id": "abs", "image": inside, "conversations": turns},
        {"id": "up", "image": "../../../../outside/secret.jpg", "conversations": turns},
        {"id": "sub", "image": "img_vertical bar_standard/good1.jpg", "conversations": turns},
        {"id": "ok", "image": "good1.jpg", "conversations": turns},
    ]
    gpt_file = tmp_path / "paths.jsonl"
    gpt_file.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in conversations), encoding="utf-8")
    out = str(tmp_path / "out")
    report = build_dataset(root, out, gpt_sources=[str(gpt_file)], configs=["pretrain", "gpt"])
    reasons = {os.path.basename(entry["source"]): entry["reason"] for entry in report["skipped"]}
    assert "not a bare file name" in reasons["absolute.json"] and "not a bare file name" in reasons["dotdot.json"]
    assert sum("not a bare file name" in reasons[f"paths.jsonl:{line}"] for line in (1, 2, 3)) == 3
    gpt = load_dataset(out, "gpt")
    assert gpt["train"]["id"] == ["ok-1"] and "test" not in gpt  # an absolute path would land in both splits
    paths = [
        row["image"]["path"]
        for config in ("pretrain", "gpt")
        for split in load_dataset(out, config).cast_column("image", Image(decode=False)).values()
        for row in split
    ]
    assert all(path.startswith(root + os.sep) for path in paths)


# Output folders: what `load_dataset(DIR, CONFIG)` serves after rebuilds, partial rebuilds and interruptions.


def first_table(out, cache_dir, config="pretrain"):
    rows = load_dataset(out, config, cache_dir=cache_dir)["train"]
    return rows[0]["completion"][0]["content"], rows.cast_column("image", Image(decode=False))[0]["image"]["path"]


def test_rebuild_in_place_serves_the_new_values(tmp_path):
    cache = str(tmp_path / "hf-cache")
    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain"])
    assert first_table(out, cache)[0].splitlines()[1] == "가 | 70개"
    one_chart_tree(raw, 73)  # same sizes everywhere: only the content changed
    build_dataset(raw, out, configs=["pretrain"])
    assert first_table(out, cache)[0].splitlines()[1] == "가 | 73개"


def test_builds_in_folders_of_the_same_name_serve_their_own_rows(tmp_path):
    cache = str(tmp_path / "hf-cache")
    x_raw, y_raw = one_chart_tree(str(tmp_path / "x-raw"), 11), one_chart_tree(str(tmp_path / "y-raw"), 22)
    x_out, y_out = str(tmp_path / "x" / "charts"), str(tmp_path / "y" / "charts")
    build_dataset(x_raw, x_out, configs=["pretrain"])
    build_dataset(y_raw, y_out, configs=["pretrain"])
    assert first_table(x_out, cache)[0].splitlines()[1] == "가 | 11개"
    table, image_path = first_table(y_out, cache)
    assert table.splitlines()[1] == "가 | 22개"
    assert image_path.startswith(y_raw + os.sep)
    shutil.rmtree(x_raw)
    shutil.rmtree(x_out)
    assert load_dataset(y_out, "pretrain", cache_dir=cache)["train"][0]["image"].size == (160, 120)


def test_rebuilding_the_same_tree_keeps_the_cache(tmp_path):
    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain"])
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    build_dataset(raw, out, configs=["pretrain"])
    assert open(os.path.join(out, "README.md"), encoding="utf-8").read() == card


def test_partial_rebuild_keeps_the_other_configs(messy_tree, tmp_path):
    root, gpt_file, _ = messy_tree
    out = str(tmp_path / "out")
    full = build_dataset(root, out, gpt_sources=[gpt_file])
    finetune_rows = sorted(load_dataset(out, "finetune")["train"]["id"])
    partial = build_dataset(root, out, configs=["pretrain"])
    assert set(partial["counts"]) == {"pretrain", "finetune", "gpt"}
    assert partial["counts"]["finetune"] == full["counts"]["finetune"]
    assert partial["gpt_files"] == full["gpt_files"]
    assert sorted(entry["config"] for entry in partial["skipped"]) == sorted(e["config"] for e in full["skipped"])
    assert sorted(load_dataset(out, "finetune")["train"]["id"]) == finetune_rows
    assert len(load_dataset(out, "all")["train"]) == 5 + 2
    on_disk = json.load(open(os.path.join(out, "build_report.json"), encoding="utf-8"))
    assert set(on_disk["counts"]) == {"pretrain", "finetune", "gpt"}


def test_partial_rebuild_from_another_tree_is_refused(messy_tree, tmp_path):
    root, gpt_file, _ = messy_tree
    out = str(tmp_path / "out")
    build_dataset(root, out, gpt_sources=[gpt_file])
    other = one_chart_tree(str(tmp_path / "other"), 5)
    with pytest.raises(ValueError, match="holds a build of .*finetune.*gpt"):
        build_dataset(other, out, configs=["pretrain"])
    assert sorted(load_dataset(out, "pretrain")["train"]["id"]) == ["good1", "good2"]
    # Rebuilding every config the folder holds replaces the build.
    other_gpt = tmp_path / "other.jsonl"
    turns = [{"from": "human", "value": "<image>\n값은?"}, {"from": "gpt", "value": "5개입니다."}]
    other_gpt.write_text(json.dumps({"id": "o", "image": "c1.jpg", "conversations": turns}), encoding="utf-8")
    report = build_dataset(other, out, gpt_sources=[str(other_gpt)], configs=["pretrain", "finetune", "gpt"])
    assert report["data_dir"] == other and load_dataset(out, "gpt")["train"]["id"] == ["o-1"]


def test_interrupted_report_write_keeps_the_last_build(tmp_path, monkeypatch):
    import dataset_builder.build as build_module

    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain", "finetune"])
    one_chart_tree(raw, 7)  # a different size, so a card out of step with the shards cannot load
    write_chart(raw, "train", "line_standard", "c2")
    calls = []

    def interrupted_dump(obj, file, **kwargs):
        calls.append(file)
        file.write(json.dumps(obj)[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module.json, "dump", interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(raw, out, configs=["pretrain", "finetune"])
    monkeypatch.undo()
    assert calls, "the report was being written when the interrupt came"
    report = json.load(open(os.path.join(out, "build_report.json"), encoding="utf-8"))
    assert report["counts"]["pretrain"]["train"]["written"] == 1
    assert load_dataset(out, "pretrain")["train"][0]["completion"][0]["content"].splitlines()[1] == "가 | 70개"
    assert len(load_dataset(out, "finetune")["train"]) == 3
    assert [name for name in os.listdir(out) if name.startswith(".build-")] == []


def test_interrupt_during_the_final_renames_waits_for_them(tmp_path, monkeypatch):
    import signal

    import dataset_builder.build as build_module

    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain"])
    one_chart_tree(raw, 7)
    write_chart(raw, "train", "line_standard", "c2")
    replace = os.replace

    renames = []

    def replace_after_ctrl_c(source, target):
        inside = os.path.relpath(target, out)
        if not inside.startswith(os.pardir) and ".build-" not in inside:  # a rename into the output folder: the swap
            renames.append(target)
            signal.raise_signal(signal.SIGINT)
        replace(source, target)

    monkeypatch.setattr(build_module.os, "replace", replace_after_ctrl_c)
    # Python's own Ctrl-C handler, whatever a library imported earlier in the session may have put there.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_dataset(raw, out, configs=["pretrain"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the build restores the handler"
    finally:
        signal.signal(signal.SIGINT, handler)
        monkeypatch.undo()
    assert len(renames) == 3  # the shard, the report and the card
    # The interrupt came during the commit: the commit finished first, so the folder holds the whole new build.
    report = json.load(open(os.path.join(out, "build_report.json"), encoding="utf-8"))
    assert report["counts"]["pretrain"]["train"]["written"] == 2
    assert sorted(load_dataset(out, "pretrain")["train"]["id"]) == ["c1", "c2"]


def test_stale_staging_folders_are_removed(tmp_path):
    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), tmp_path / "charts"
    stale = out / ".build-killed" / "parquet" / "pretrain"
    stale.mkdir(parents=True)
    (stale / "train-00000.parquet.partial").write_bytes(b"half a shard")
    build_dataset(raw, str(out), configs=["pretrain"])
    assert not (out / ".build-killed").exists()
    assert [name for name in os.listdir(out) if name.startswith(".build-")] == []


def test_a_second_build_into_the_same_folder_is_refused(tmp_path):
    from filelock import FileLock

    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain"])
    with FileLock(os.path.join(out, ".build.lock")):
        with pytest.raises(OSError, match="another build is writing into"):
            build_dataset(raw, out, configs=["pretrain"])
    assert len(load_dataset(out, "pretrain")["train"]) == 1
    build_dataset(raw, out, configs=["pretrain"])


# Arguments checked before any work, and builds that produce nothing.


def test_num_proc_below_one_is_refused_before_work(tmp_path, capsys):
    from chartwiz.commands.cli import main

    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), tmp_path / "charts"
    with pytest.raises(ValueError, match="num_proc must be at least 1, got 0"):
        build_dataset(raw, str(out), num_proc=0)
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "--data-dir", raw, "--out", str(out), "--num-proc", "0"])
    assert exit_info.value.code == 2
    assert "argument --num-proc: must be at least 1, got 0" in capsys.readouterr().err and not out.exists()


def test_a_build_where_every_record_is_skipped_fails(tmp_path, capsys):
    from chartwiz.commands.cli import main

    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain"])
    for name in ("c1.jpg",):
        os.remove(os.path.join(image_dir(raw, "train", "vertical bar_standard"), name))
    write_chart(raw, "test", "line_standard", "c2", image=None)
    with pytest.raises(ValueError, match=r"pretrain: all 2 records were skipped.*is missing"):
        build_dataset(raw, out, configs=["pretrain"])
    failed = json.load(open(os.path.join(out, "build_report.failed.json"), encoding="utf-8"))
    assert failed["counts"]["pretrain"]["train"]["skipped"] == 1
    # The previous build is still the one served.
    assert len(load_dataset(out, "pretrain")["train"]) == 1
    assert main(["data", "build", "--data-dir", raw, "--out", out, "--configs", "pretrain"]) != 0
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert lines[-1].startswith("chartwiz data build: error: pretrain: all 2 records were skipped")


def test_a_gpt_image_name_in_two_chart_type_folders_is_a_bad_record(tmp_path):
    root = str(tmp_path / "aihub")
    write_chart(root, "train", "vertical bar_standard", "twice")
    write_chart(root, "train", "pie_standard", "twice")
    write_chart(root, "train", "pie_standard", "once")
    write_chart(root, "test", "line_standard", "other")
    qa = tmp_path / "qa.jsonl"
    conversation = [{"from": "human", "value": "<image>\n값은?"}, {"from": "gpt", "value": "1개"}]
    qa.write_text(
        "\n".join(
            json.dumps({"id": name, "image": f"{name}.jpg", "conversations": conversation})
            for name in ("twice", "once")
        )
        + "\n",
        encoding="utf-8",
    )
    report = build_dataset(root, str(tmp_path / "out"), gpt_sources=[str(qa)], configs=["gpt"], num_proc=1)
    assert report["counts"]["gpt"]["train"] == {**report["counts"]["gpt"]["train"], "written": 1, "skipped": 1}
    (skipped,) = report["skipped"]
    assert "'twice.jpg' is in both img_pie_standard and img_vertical bar_standard" in skipped["reason"]


def test_an_image_named_in_decomposed_jamo_on_disk_is_found_by_its_composed_name(tmp_path):
    from unicodedata import normalize

    root = str(tmp_path / "aihub")
    annotation = write_chart(root, "train", "pie_standard", "c1", image=None)
    annotation["image"][0]["filename"] = normalize("NFC", "원형차트.jpg")
    write_chart(root, "train", "pie_standard", "c1", annotation=annotation, image=None)
    draw_chart(160, 120).save(os.path.join(image_dir(root, "train", "pie_standard"), normalize("NFD", "원형차트.jpg")))
    qa = tmp_path / "qa.jsonl"
    conversation = [{"from": "human", "value": "<image>\n값은?"}, {"from": "gpt", "value": "1개"}]
    qa.write_text(json.dumps({"id": "q", "image": "원형차트.jpg", "conversations": conversation}) + "\n", "utf-8")
    report = build_dataset(root, str(tmp_path / "out"), gpt_sources=[str(qa)], num_proc=1)
    assert report["skipped"] == []
    assert report["counts"]["pretrain"]["train"]["written"] == report["counts"]["gpt"]["train"]["written"] == 1


def test_korean_in_decomposed_jamo_becomes_composed_syllables_in_every_config(tmp_path):
    from unicodedata import normalize

    root = str(tmp_path / "aihub")
    annotation = write_chart(root, "train", "vertical bar_standard", "nfd")
    decomposed = json.loads(normalize("NFD", json.dumps(annotation, ensure_ascii=False)))
    write_chart(root, "train", "vertical bar_standard", "nfd", annotation=decomposed)
    qa = tmp_path / "qa.jsonl"
    conversation = [{"from": "human", "value": "<image>\n가의 값은?"}, {"from": "gpt", "value": "1개입니다."}]
    record = {"id": "c", "image": "nfd.jpg", "conversations": conversation}
    qa.write_text(normalize("NFD", json.dumps(record, ensure_ascii=False)) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    build_dataset(root, out, gpt_sources=[str(qa)], num_proc=1)
    texts = []
    for config in ("pretrain", "finetune", "gpt", "all"):
        for row in load_dataset(out, config, split="train"):
            texts += [message["content"] for message in (*row["prompt"], *row["completion"])]
    korean = [text for text in texts if any("\u1100" <= char <= "\ud7a3" for char in text)]
    assert len(korean) >= 6 and all(text == normalize("NFC", text) for text in texts)
    assert "nfd 제목" in "\n".join(texts) and "가의 값은?" in texts and "1개입니다." in texts


@pytest.mark.slow
def test_repeated_gpt_ids_keep_the_first_and_list_the_others(tmp_path, capsys, caplog):
    from chartwiz.commands.cli import main

    root = str(tmp_path / "aihub")
    write_chart(root, "train", "pie_standard", "a")
    write_chart(root, "train", "pie_standard", "broken", raw_json="{not json")
    write_chart(root, "test", "line_standard", "b")

    def conversation(conversation_id, image, answer, question="<image>\n값은?"):
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return {"id": conversation_id, "image": image, "conversations": turns}

    qa = [
        conversation("dup", "a.jpg", "처음 답"),
        conversation("other", "a.jpg", "다른 답"),
        conversation("dup", "a.jpg", "나중 답"),
        conversation("dup", "a.jpg", "또 나중 답"),
        conversation("b", "b.jpg", "", question="   "),  # the test split's only conversation has nothing to ask
    ]
    gpt_file = tmp_path / "qa.jsonl"
    gpt_file.write_text("\n".join(json.dumps(item, ensure_ascii=False) for item in qa) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    argv = ["data", "build", "--data-dir", root, "--gpt", str(gpt_file), "--out", out, "--num-proc", "2"]
    with caplog.at_level("WARNING"):
        assert main([*argv, "--configs", "gpt", "finetune"]) == 0
    printed = capsys.readouterr().out

    rows = load_dataset(out, "gpt", split="train")
    answers = {row["id"]: row["completion"][0]["content"] for row in rows}
    assert answers == {"dup-1": "처음 답", "other-1": "다른 답"}, "the first conversation of an id is kept"
    report = json.load(open(os.path.join(out, "build_report.json"), encoding="utf-8"))
    repeated = [entry for entry in report["skipped"] if "repeats" in entry["reason"]]
    assert sorted(entry["source"] for entry in repeated) == [f"{gpt_file}:3", f"{gpt_file}:4"]
    assert all(f"the first, {gpt_file}:1, is kept" in entry["reason"] for entry in repeated)
    assert report["counts"]["gpt"]["train"] == {**report["counts"]["gpt"]["train"], "written": 2, "skipped": 2}

    # A split that loses every record is a warning in the log, the report, the card and the closing lines.
    (warning,) = report["warnings"]
    assert warning["config"] == "gpt" and warning["split"] == "test"
    assert warning["message"].startswith("gpt/test is empty: all 1 records were skipped (e.g. ")
    assert warning["message"] in caplog.text and f"warning: {warning['message']}" in printed
    assert warning["message"] in open(os.path.join(out, "README.md"), encoding="utf-8").read()
    # The closing line counts records: the broken chart is one entry standing for its three finetune rows.
    records = 2 + 1 + 3
    assert len(report["skipped"]) == 4
    assert f"{records} skipped records are listed with their reasons in {out}/build_report.json (4 entries)" in printed


_KILLED_IN_THE_SWAP = """
import os, signal, sys

import dataset_builder.build as build

raw, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
replace, renames = os.replace, []


def replace_then_die(source, target):
    replace(source, target)
    inside = os.path.relpath(target, out)
    if not inside.startswith(os.pardir) and ".build-" not in inside:  # a rename into the output folder: the swap
        renames.append(inside)
        if len(renames) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


build.os.replace = replace_then_die
build.build_dataset(raw, out, configs=["pretrain", "finetune"], num_proc=1)
print(len(renames))
"""


@pytest.mark.slow
def test_a_kill_between_any_two_renames_of_the_swap_leaves_one_whole_build(tmp_path):
    import subprocess
    import sys

    def rows(config, cache):
        split = load_dataset(out, config, split="train", cache_dir=str(tmp_path / cache))
        return sorted((row["id"], row["completion"][0]["content"]) for row in split)

    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    write_chart(raw, "test", "line_standard", "t1")
    build_dataset(raw, out, configs=["pretrain", "finetune"], num_proc=1)
    old = {config: rows(config, "cache-old") for config in ("pretrain", "finetune")}
    one_chart_tree(raw, 7)
    write_chart(raw, "train", "pie_standard", "c2")

    kill_after, finished = 1, None
    while finished is None:
        work = tmp_path / f"kill-{kill_after}"
        shutil.copytree(out, work / "charts")
        result = subprocess.run(
            [sys.executable, "-c", _KILLED_IN_THE_SWAP, raw, str(work / "charts"), str(kill_after)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode == 0:  # fewer renames than `kill_after`: the whole swap ran
            finished = int(result.stdout.strip().splitlines()[-1])
            break
        assert result.returncode == -9, result.stderr[-2000:]
        # Killed after `kill_after` renames: the folder loads as one build, the old or the new, never a mix.
        loaded = {}
        for config in ("pretrain", "finetune"):
            split = load_dataset(str(work / "charts"), config, split="train", cache_dir=str(work / "cache"))
            loaded[config] = sorted((row["id"], row["completion"][0]["content"]) for row in split)
        assert loaded == old or (
            sorted(i for i, _ in loaded["pretrain"]) == ["c1", "c2"] and len(loaded["finetune"]) == 6
        ), f"killed after rename {kill_after}: {loaded}"
        new_card = "c2" in str(loaded)
        # The next build completes the swap and leaves no shard the card does not name.
        build_dataset(raw, str(work / "charts"), configs=["pretrain", "finetune"], num_proc=1)
        report = json.load(open(work / "charts" / "build_report.json", encoding="utf-8"))
        listed = sorted(
            path for by_split in report["counts"].values() for c in by_split.values() for path in c["files"]
        )
        on_disk = sorted(
            os.path.relpath(os.path.join(folder, name), work / "charts")
            for folder, _, names in os.walk(work / "charts")
            for name in names
            if name.endswith(".parquet")
        )
        assert on_disk == listed, f"killed after rename {kill_after} (card switched: {new_card})"
        kill_after += 1
    # Shards of both splits of both configs, the report and the card: every kill point was tried.
    assert finished == kill_after - 1 >= 6


_SLOW_BUILD = """
import sys, time

import dataset_builder.builder as builder

check_image = builder.check_image


def slow_check_image(path):
    time.sleep(0.5)  # long enough for the test to interrupt the build in the middle
    return check_image(path)


builder.check_image = slow_check_image
from chartwiz.commands.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_in_a_build_is_one_line_and_keeps_the_previous_build(tmp_path):
    raw, out = one_chart_tree(str(tmp_path / "raw"), 70), str(tmp_path / "charts")
    build_dataset(raw, out, configs=["pretrain"], num_proc=1)
    for index in range(8):
        write_chart(raw, "train", "pie_standard", f"p{index}")
    argv = ["data", "build", "--data-dir", raw, "--out", out, "--configs", "pretrain", "--num-proc", "1"]
    # Two seconds into the charts once the build has started staging.
    last_line = ctrl_c_when(_SLOW_BUILD, argv, lambda: any(n.startswith(".build-") for n in os.listdir(out)), 2.0)
    assert last_line == (
        "chartwiz data build: interrupted; the output folder keeps its previous build; run the same command again to "
        "build"
    )
    assert load_dataset(out, "pretrain", split="train")["id"] == ["c1"]
    assert not [name for name in os.listdir(out) if name.startswith(".build-")]
