"""The AI-Hub chart data contract: folder layout, annotation parsing and the table text."""

import json
import math
import os
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from chartwiz.errors import ChartWizFileNotFoundError, ChartWizValueError
from chartwiz.names import CHART_TYPE_FOLDERS, CHART_TYPES


SPLITS = ("train", "test")
HORIZONTAL_CHART_MAIN = "가로 막대형"


class BadRecord(ChartWizValueError):
    """A record that breaks the contract; the message says what is wrong."""


@dataclass(frozen=True)
class AnnotationFile:
    """One annotation file of the tree, with where its image should be."""

    split: str
    folder: str
    path: str
    image_dir: str

    @property
    def chart_type(self) -> str:
        return CHART_TYPE_FOLDERS[self.folder]

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


@dataclass
class ChartRecord:
    """The fields of one annotation file that the builder uses."""

    stem: str
    chart_type: str
    image_path: str
    table: str
    description: str = ""
    summary: str = ""


def text_dir(root: str, split: str, folder: str) -> str:
    return os.path.join(root, split, "text_data", f"text_{folder}")


def image_dir(root: str, split: str, folder: str) -> str:
    return os.path.join(root, split, "img_data", f"img_{folder}")


def on_disk(path: str) -> str:
    """
    `path`, or the same path with its name in the other Unicode normal form where only that one is there: a file named
    on macOS keeps its Korean name in decomposed jamo (NFD), which a record written elsewhere spells composed (NFC).
    """
    if os.path.exists(path):
        return path
    folder, name = os.path.split(path)
    for form in ("NFC", "NFD"):
        candidate = os.path.join(folder, unicodedata.normalize(form, name))
        if candidate != path and os.path.exists(candidate):
            return candidate
    return path


def find_in_image_folders(img_data: str, filename: str) -> tuple[str, str] | None:
    """
    (path, chart_type) of a bare file name in the ten chart-type folders of an `img_data/` folder, None if it is in
    none. A name in two folders could be either chart: `BadRecord` naming both, rather than a guess.
    """
    candidates = [
        (on_disk(os.path.join(img_data, f"img_{folder}", filename)), chart_type)
        for folder, chart_type in CHART_TYPE_FOLDERS.items()
    ]
    found = [(path, chart_type) for path, chart_type in candidates if os.path.isfile(path)]
    if len(found) > 1:
        folders = " and ".join(os.path.basename(os.path.dirname(path)) for path, _ in found)
        raise BadRecord(f"image {filename!r} is in both {folders}; name it with its folder, or rename one of them")
    return found[0] if found else None


def check_tree(root: str) -> list[str]:
    """The splits present under `root`; raises `FileNotFoundError` saying what an AI-Hub tree should look like."""
    if not os.path.isdir(root):
        raise ChartWizFileNotFoundError(f"{root}: no such directory (expected an AI-Hub tree with train/ and test/)")
    splits = [split for split in SPLITS if os.path.isdir(os.path.join(root, split, "text_data"))]
    if not splits:
        raise ChartWizFileNotFoundError(
            f"{root}: neither train/text_data nor test/text_data exists; point --data-dir at the folder that holds "
            "the AI-Hub train/ and test/ trees."
        )
    return splits


def image_in_folder(folder: str, name: str, field: str = "image") -> str:
    """
    The one rule of `chartwiz data build` and `chartwiz infer` for the image a record names: a path relative to the
    image folder that stays inside it. Raises `BadRecord` for an absolute path (or a drive), a `..` that leads out of
    the folder, and a NUL, so that nothing outside the folder is read (or uploaded with `--push-to-hub`); a symbolic
    link inside the folder is one of its files. Returns the path in the folder (`on_disk`).
    """
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise BadRecord(f"{field} {name!r} is not a file name")
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or name.startswith(("/", "\\")):
        raise BadRecord(f"{field} {name!r} is an absolute path: images are read from inside {folder} only")
    relative = os.path.normpath(name)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise BadRecord(f"{field} {name!r} leads out of {folder}: images are read from inside it only")
    return on_disk(os.path.join(folder, relative))


def bare_file_name(name: str, field: str) -> str:
    """
    `name` if it is a bare file name, as the AI-Hub tree's flat image folders hold them; raises `BadRecord` for an
    absolute path, a folder part or `..`, which would read a file outside the split's `img_data/<folder>/` (and upload
    it with `--push-to-hub`): `image_in_folder`'s rule, and no sub-folders.
    """
    if (
        name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or os.path.isabs(name)
        or os.path.splitdrive(name)[0]
    ):
        raise BadRecord(f"{field} {name!r} is not a bare file name (images are read from the split's img_data/ only)")
    return name


def shard_of(name: str, num_shards: int) -> int:
    """A stable shard index for a file name (the same on every machine and Python run)."""
    return zlib.crc32(name.encode("utf-8")) % num_shards


def iter_annotation_files(
    root: str, split: str, folders=None, shard_index: int = 0, num_shards: int = 1
) -> Iterator[AnnotationFile]:
    """
    The annotation files of one split, folder by folder in the contract's order, names sorted; with `num_shards`,
    only the names that hash to `shard_index`. The folder is scanned as a stream and only that shard's names held.
    """
    for folder in folders or CHART_TYPE_FOLDERS:
        directory = text_dir(root, split, folder)
        if not os.path.isdir(directory):
            continue
        with os.scandir(directory) as entries:
            names = sorted(
                entry.name
                for entry in entries
                if entry.name.endswith(".json")
                and (num_shards == 1 or shard_of(entry.name, num_shards) == shard_index)
                and entry.is_file()
            )
        images = image_dir(root, split, folder)
        for name in names:
            yield AnnotationFile(split=split, folder=folder, path=os.path.join(directory, name), image_dir=images)


def unknown_folders(root: str, split: str) -> list[str]:
    """Folders under text_data/ that are not one of the ten chart types (their files are not records)."""
    directory = os.path.join(root, split, "text_data")
    if not os.path.isdir(directory):
        return []
    known = {f"text_{folder}" for folder in CHART_TYPE_FOLDERS}
    return sorted(name for name in os.listdir(directory) if name not in known)


def clean_cell(text) -> str:
    """Cell text: a `|` or newline inside becomes a space; surrounding whitespace is stripped."""
    text = str(text)
    for character in ("|", "\r\n", "\n", "\r"):
        text = text.replace(character, " ")
    return text.strip()


def format_value(value, where: str) -> str:
    """A value as the annotator gave it: int stays int, float in shortest form, numeric string as it is."""
    if isinstance(value, bool) or value is None:
        raise BadRecord(f"{where}: value {value!r} is not a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecord(f"{where}: value {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        stripped = value.strip()
        try:
            number = float(stripped.replace(",", ""))
        except ValueError:
            raise BadRecord(f"{where}: value {value!r} is not a number") from None
        if not math.isfinite(number):
            raise BadRecord(f"{where}: value {value!r} is not a finite number")
        return stripped
    raise BadRecord(f"{where}: value {value!r} has type {type(value).__name__}, expected a number")


def _require(mapping, key: str, expected_type, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise BadRecord(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, expected_type):
        names = (
            expected_type.__name__ if isinstance(expected_type, type) else "/".join(t.__name__ for t in expected_type)
        )
        raise BadRecord(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def _value_rows(data_label, where: str) -> list[list]:
    if not isinstance(data_label, list) or not data_label:
        raise BadRecord(f"{where}: data_label is empty")
    if all(not isinstance(item, list) for item in data_label):
        rows = [data_label]
    elif all(isinstance(item, list) for item in data_label):
        rows = data_label
    else:
        raise BadRecord(f"{where}: data_label mixes lists and values")
    if any(not row for row in rows):
        raise BadRecord(f"{where}: data_label has an empty row")
    if len({len(row) for row in rows}) != 1:
        raise BadRecord(f"{where}: data_label rows have different lengths {[len(row) for row in rows]}")
    return rows


def block_lines(block: dict, horizontal: bool, header_written: bool, where: str) -> tuple[list[str], bool]:
    """The table lines of one annotation block, and whether a category header line has been written by now."""
    unit = clean_cell(_require(block, "unit", (str, type(None)), where) or "")
    legend = [clean_cell(entry) for entry in _require(block, "legend", list, where)]
    axis_label = _require(block, "axis_label", dict, where)
    x_axis = [clean_cell(label) for label in _require(axis_label, "x_axis", list, f"{where}.axis_label")]
    y_axis = [clean_cell(label) for label in _require(axis_label, "y_axis", list, f"{where}.axis_label")]
    rows = _value_rows(_require(block, "data_label", list, where), where)
    width = len(rows[0])

    primary, other = (y_axis, x_axis) if horizontal else (x_axis, y_axis)
    if primary and len(primary) == width:
        categories = primary
    elif other and len(other) == width:
        categories = other
    elif not primary and not other:
        categories = []
    else:
        raise BadRecord(
            f"{where}: {width} values per row do not fit the categories "
            f"(primary axis has {len(primary)} labels, the other {len(other)})"
        )

    def cell(value, index: str) -> str:
        return clean_cell(format_value(value, f"{where}.data_label{index}") + unit)

    lines = []
    if legend and categories:
        if len(rows) != len(legend):
            raise BadRecord(f"{where}: {len(rows)} value rows for {len(legend)} legend entries")
        if not header_written:
            lines.append("| " + " | ".join(categories))
            header_written = True
        for row_index, (name, row) in enumerate(zip(legend, rows)):
            values = [cell(value, f"[{row_index}][{column}]") for column, value in enumerate(row)]
            lines.append(" | ".join([name, *values]))
    elif legend:
        if len(rows) == 1 and width == len(legend):
            values = rows[0]
        elif width == 1 and len(rows) == len(legend):
            values = [row[0] for row in rows]
        else:
            raise BadRecord(f"{where}: {len(rows)}x{width} values do not pair with {len(legend)} legend entries")
        lines.extend(
            f"{name} | {cell(value, f'[{index}]')}" for index, (name, value) in enumerate(zip(legend, values))
        )
    elif categories:
        if len(rows) != 1:
            raise BadRecord(f"{where}: {len(rows)} value rows but no legend to name them")
        lines.extend(
            f"{category} | {cell(value, f'[0][{index}]')}"
            for index, (category, value) in enumerate(zip(categories, rows[0]))
        )
    else:
        raise BadRecord(f"{where}: the block has neither categories nor a legend")
    return lines, header_written


def table_text(annotation: dict, folder: str | None = None) -> str:
    """The contract's linearized table of one annotation file's `annotations` blocks."""
    blocks = _require(annotation, "annotations", list, "record")
    if not blocks:
        raise BadRecord("record: annotations is empty")
    metadata = annotation.get("metadata")
    chart_main = metadata.get("chart_main") if isinstance(metadata, dict) else None
    horizontal = chart_main == HORIZONTAL_CHART_MAIN or (folder or "").startswith("horizontal bar_")
    first = blocks[0]
    title = clean_cell(_require(first, "title", str, "annotations[0]"))
    lines = [f"TITLE | {title}"]
    header_written = False
    for index, block in enumerate(blocks):
        block_table, header_written = block_lines(block, horizontal, header_written, f"annotations[{index}]")
        lines.extend(block_table)
    return "\n".join(line.rstrip() for line in lines)


def summary_text(summary) -> str:
    """`summary` sentences joined with single spaces (a plain string is accepted)."""
    if isinstance(summary, str):
        return summary.strip()
    if isinstance(summary, list) and all(isinstance(sentence, str) for sentence in summary):
        return " ".join(sentence.strip() for sentence in summary if sentence.strip())
    return ""


def read_annotation(entry: AnnotationFile) -> ChartRecord:
    """Parses one annotation file into a `ChartRecord`; raises `BadRecord` with the reason."""
    try:
        with open(entry.path, encoding="utf-8-sig") as file:
            annotation = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRecord(f"JSON does not parse: {error}") from None
    if not isinstance(annotation, dict):
        raise BadRecord(f"JSON top level is {type(annotation).__name__}, expected an object")
    images = _require(annotation, "image", list, "record")
    if not images or not isinstance(images[0], dict) or not isinstance(images[0].get("filename"), str):
        raise BadRecord("record: missing field 'image[0].filename'")
    filename = bare_file_name(images[0]["filename"], "image[0].filename")
    table = table_text(annotation, entry.folder)
    description = annotation.get("description")
    return ChartRecord(
        stem=entry.stem,
        chart_type=entry.chart_type,
        image_path=image_in_folder(entry.image_dir, filename, "image[0].filename"),
        table=table,
        description=description.strip() if isinstance(description, str) else "",
        summary=summary_text(annotation.get("summary")),
    )


__all__ = [
    "CHART_TYPES",
    "CHART_TYPE_FOLDERS",
    "AnnotationFile",
    "BadRecord",
    "ChartRecord",
    "bare_file_name",
    "check_tree",
    "clean_cell",
    "find_in_image_folders",
    "format_value",
    "image_dir",
    "image_in_folder",
    "iter_annotation_files",
    "on_disk",
    "shard_of",
    "read_annotation",
    "summary_text",
    "table_text",
    "text_dir",
    "unknown_folders",
]
