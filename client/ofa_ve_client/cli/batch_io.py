"""Rows for `ofa-ve batch`: JSONL or CSV in, JSONL out, one bad row never stops the rest.

Datasets carry more than the model reads (ids, gold labels, sources), so every
column of a row is kept, empty ones included, and written back beside the
prediction; only `image`, `hypothesis` and `premise` go to the server.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator
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
    for key in ("image", "hypothesis"):
        # The SDK's (and, for an empty one, the server's) wording for the same error.
        name, value = key.upper(), fields.get(key)
        if value is None:
            return Row(index, fields, InvalidInputError(f"{name}: missing from the item"))
        if isinstance(value, str) and not value.strip():
            return Row(index, fields, InvalidInputError(f"{name}: is empty"))
    return Row(index, fields)


def _column_name(cell: str) -> str:
    """A header cell: the model's columns in any case, other names as written."""
    name = cell.strip()
    return name.lower() if name.lower() in COLUMNS else name


def _is_header(cells: list[str]) -> bool:
    names = {_column_name(c) for c in cells}
    return "image" in names and "hypothesis" in names


# A cell that reads as a column name: a word such as `img` or `gold_label`. An image
# cell of a data row has a suffix, a folder or a scheme (`a.jpg`, `img/1`, `https:`).
_NAME_CELL = re.compile(r"[A-Za-z_][\w-]*")


def _check_unnamed_header(cells: list[str]) -> None:
    """Refuse a first row that is a header, but not one naming the model's columns
    (`img,text`): read as data, it would be sent as an image called `img`."""
    if all(_NAME_CELL.fullmatch(c.strip()) for c in cells):
        raise InvalidInputError(
            f"the CSV header {','.join(c.strip() for c in cells)!r} does not name the "
            "columns image and hypothesis: name them so (premise optional, any order, "
            "other columns are kept), or drop the header row to give the cells in the "
            "order image, hypothesis, premise"
        )


def peek_format(lines: Iterable[str]) -> tuple[str | None, Iterator[str]]:
    """Tell JSONL from anything else by the first non-blank line (for stdin, which has
    no suffix): "jsonl" when it starts with `{` (or there is none), else None; and the
    lines, the peeked ones included."""
    stream = iter(lines)
    peeked: list[str] = []
    for line in stream:
        peeked.append(line)
        if line.strip():
            fmt = "jsonl" if line.lstrip("\ufeff \t").startswith("{") else None
            return fmt, itertools.chain(peeked, stream)
    return "jsonl", iter(peeked)


def read_rows(stream: Iterable[str], fmt: str) -> Iterator[Row]:
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
            if header is None and index == 0:
                if not _is_header(cells):
                    _check_unnamed_header(cells)  # the whole file would be misread
                else:
                    header = [_column_name(c) for c in cells]
                    repeated = sorted({h for h in header if header.count(h) > 1})
                    if repeated:  # the whole file is ambiguous, not one row
                        raise InvalidInputError(
                            f"CSV header repeats columns: {', '.join(repeated)}"
                        )
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


def read_done(path: str) -> dict[int, dict[str, Any]]:
    """The answered lines of an earlier run's output, by row index (`batch --resume`
    keeps them and sends only the other rows; failed lines and a line cut short by
    an interruption are sent again)."""
    done: dict[int, dict[str, Any]] = {}
    try:
        stream = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return done
    with stream:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("index"), int):
                continue
            if "error" not in record and "label" in record:
                done[record["index"]] = record
    return done


def start_output(path: str, kept: Iterable[dict[str, Any]] | None, stdio: TextIO) -> TextIO:
    """The output stream, opened for writing: stdout for `-`; else the file. Resuming
    (`kept` given), the file holds the kept lines first (written whole to a new file
    that replaces the old one, so an interruption here loses nothing), and the new
    lines are appended after them."""
    if kept is None or path == "-":
        return open_text(path, "w", stdio)
    target = Path(path)
    fresh = target.with_name(target.name + ".tmp")
    with open(fresh, "w", encoding="utf-8") as stream:
        for record in sorted(kept, key=lambda r: r["index"]):
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    fresh.replace(target)
    return open(target, "a", encoding="utf-8")


def open_text(path: str, mode: str, stdio: TextIO) -> TextIO:
    if path == "-":
        return stdio
    return open(path, mode, encoding="utf-8", newline="" if "r" in mode else None)
