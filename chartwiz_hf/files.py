"""Writing files so that an interruption never leaves one half written."""

import json
import os
import tempfile


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """
    Writes `text` (UTF-8) to a temporary file beside `path`, flushes it to disk and renames it into place: a reader,
    or a run that resumes after a kill, sees the old file or the new one, never a part of it.
    """
    path = os.fspath(path)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """`data` as indented JSON (Korean kept as written), through `write_text_atomic`."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


__all__ = ["write_json_atomic", "write_text_atomic"]
