"""An annotation block read back, the one reading the text and the drawing share: its series and its values."""


def series_of(block: dict) -> list[tuple[str, list[tuple[str, object]]]]:
    """[(series name, [(label, value)])] of a block, in data order."""
    rows = block["data_label"] if isinstance(block["data_label"][0], list) else [block["data_label"]]
    categories = block["axis_label"]["x_axis"] or block["axis_label"]["y_axis"]
    if not categories:
        values = rows[0] if len(rows) == 1 else [row[0] for row in rows]
        return [("", list(zip(block["legend"], values)))]
    names = block["legend"] or [""]
    return [(name, list(zip(categories, row))) for name, row in zip(names, rows)]


def shown(value) -> str:
    """A value as the annotation writes it: a string typed by an annotator stays as it is."""
    return value if isinstance(value, str) else (str(value) if isinstance(value, int) else repr(value))


def numeric(value) -> float:
    return float(value) if not isinstance(value, str) else float(value.replace(",", ""))
