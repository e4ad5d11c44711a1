"""Rows for `ofa-ve batch`: JSONL or CSV in, JSONL out, one bad row never stops the rest.

Datasets carry more than the model reads (ids, gold labels, sources), so every
column of a row is kept, empty ones included, and written back beside the
prediction; only `image`, `hypothesis` and `premise` go to the server.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..errors import InvalidInputError, VisualEntailmentError
from ..url_fetch import is_url

COLUMNS = ("image", "hypothesis", "premise")
# Keys the output line itself uses; an input column of the same name is written as
# `input_<name>` so that neither the row's value nor the prediction is lost.
OUTPUT_KEYS = ("index", "label", "answer", "score", "probs", "error")


@dataclass
class Row:
    """One input row: its number (0-based, data rows only), every field as read, or why it
    is unusable."""

    index: int
    fields: dict[str, Any]
    error: VisualEntailmentError | None = None


def detect_format(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json") or path == "-":
        return "jsonl"
    raise ValueError(f"cannot tell the format of {path!r}: use .jsonl or .csv, or --format")


def _resolve_image(value: Any, base: Path | None) -> Any:
    """Relative paths are taken relative to the input file's folder, so datasets move as one."""
    if isinstance(value, str) and value and not is_url(value) and base is not None:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    return value


def _row(index: int, record: Any) -> Row:
    if not isinstance(record, dict):
        return Row(index, {}, InvalidInputError("row must be a JSON object"))
    fields = dict(record)
    missing = [k for k in ("image", "hypothesis") if fields.get(k) in (None, "")]
    if missing:
        name = missing[0].upper()
        return Row(index, fields, InvalidInputError(f"{name}: missing or empty", input_name=name))
    return Row(index, fields)


def _column_name(cell: str) -> str:
    """A header cell: the model's columns in any case, other names as written."""
    name = cell.strip()
    return name.lower() if name.lower() in COLUMNS else name


def _is_header(cells: list[str]) -> bool:
    names = {_column_name(c) for c in cells}
    return "image" in names and "hypothesis" in names


def read_rows(stream: TextIO, fmt: str) -> Iterator[Row]:
    """Yield rows lazily (large files never sit in memory whole)."""
    if fmt == "jsonl":
        index = 0
        for line in stream:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                row = Row(index, {}, InvalidInputError(f"invalid JSON: {exc.msg}"))
            else:
                row = _row(index, record)
            index += 1
            yield row
    elif fmt == "csv":
        # With a header row (any column order, any extra columns, found by its `image`
        # and `hypothesis` names) cells are named by it; without one they are image,
        # hypothesis, premise in that order.
        reader = csv.reader(stream)
        header: list[str] | None = None
        index = 0
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None and index == 0 and _is_header(cells):
                header = [_column_name(c) for c in cells]
                repeated = sorted({h for h in header if header.count(h) > 1})
                if repeated:  # the whole file is ambiguous, not one row
                    raise InvalidInputError(f"CSV header repeats columns: {', '.join(repeated)}")
                continue
            names = header or list(COLUMNS)
            if len(cells) > len(names):
                reason = f"{len(cells)} cells, expected at most {len(names)}"
                row = Row(index, {}, InvalidInputError(reason))
            else:
                row = _row(index, dict(zip(names, cells, strict=False)))
            index += 1
            yield row
    else:
        raise ValueError(f"unknown format {fmt!r} (jsonl or csv)")


def count_rows(path: str, fmt: str) -> int | None:
    """Rows in a file, for the progress bar's total (None for stdin: it can be read once)."""
    if path == "-":
        return None
    with open_text(path, "r", None) as stream:  # type: ignore[arg-type]
        if fmt == "jsonl":
            return sum(1 for line in stream if line.strip())
        return sum(1 for _ in read_rows(stream, fmt))


def item_of(row: Row, base: Path | None) -> dict[str, Any]:
    """What goes to the server: the model's columns, an empty premise as none."""
    item = {k: row.fields[k] for k in COLUMNS if row.fields.get(k) not in (None, "")}
    item["image"] = _resolve_image(item["image"], base)
    return item


def output_record(row: Row, result: Any) -> dict[str, Any]:
    """The JSONL line for one row: its index, every input field as read (an input column
    named like an output key becomes `input_<name>`), then the prediction or the error."""
    record: dict[str, Any] = {"index": row.index}
    for key, value in row.fields.items():
        name = key
        while name in OUTPUT_KEYS or (name != key and name in row.fields):
            name = f"input_{name}"
        record[name] = value
    if isinstance(result, VisualEntailmentError):
        record["error"] = result.to_dict()
    else:
        record.update(result.to_dict())
    return record


def open_text(path: str, mode: str, stdio: TextIO) -> TextIO:
    if path == "-":
        return stdio
    return open(path, mode, encoding="utf-8", newline="" if "r" in mode else None)
