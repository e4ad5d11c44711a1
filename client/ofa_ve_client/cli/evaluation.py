"""SNLI-VE evaluation through the server: datasets as their authors publish them, scores.

Two formats are read, lazily (the test split's TSV is gigabytes):

- **SNLI-VE JSONL** (`snli_ve_{train,dev,test}.jsonl`, from necla-ml/SNLI-VE's
  generator): SNLI's records plus the Flickr30k image file name. The generator
  writes the key as `Flikr30kID` (sic; its README says `Flickr30kID`); both are
  read. The hypothesis is `sentence2`, the gold label `gold_label`, the id
  `pairID`; `sentence1` is the Flickr30k caption, the text premise only with
  `with_caption`. Images come from a Flickr30k folder: `images_dir/<id>`, with `.jpg`
  added to an id that has no image extension (`image_file_name`).
- **OFA's SNLI-VE TSV** (what OFA-Sys/OFA's evaluation reads): tab-separated
  `uniq_id, image_id, image, hypothesis, caption, label` with the image as
  URL-safe base64, or the five columns OFA selects from it (no `image_id`).

Scoring follows the card's metric: accuracy over the pairs, the label being the
one with the largest probability. A pair that fails (missing image, server
error) is not scored; it is counted in `errors` and written with its error.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import LABELS
from ..errors import InvalidInputError, VisualEntailmentError
from ..prediction import Prediction

IMAGE_ID_KEYS = ("Flikr30kID", "Flickr30kID", "Flickr30K_ID", "flickr30k_id")
# An image id ending in one of these is a file name already (the server reads them all).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
PREDICTION_COLUMNS = (
    "pair_id",
    "gold",
    "predicted",
    "answer",
    "correct",
    *(f"p_{label}" for label in LABELS),
    "error",
)
# OFA's TSV names the labels with SNLI's words; a few releases use OFA's answers.
_LABEL_WORDS = {
    **{label: label for label in LABELS},
    "yes": "entailment",
    "maybe": "neutral",
    "no": "contradiction",
}


@dataclass(frozen=True)
class Pair:
    """One dataset record: what goes to the server, and the gold answer to score against.

    `image` is a path or the image's bytes; `problem` says why the record cannot be
    sent (it is then written with that error and not scored).
    """

    pair_id: str
    image: Path | bytes | None
    hypothesis: str
    premise: str | None
    gold: str | None
    problem: str | None = None


def detect_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    raise ValueError(f"cannot tell the format of {str(path)!r}: use .jsonl or .tsv, or --format")


def image_file_name(image_id: str) -> str:
    """The file of a Flickr30k image id: the id itself when it ends in an image
    extension (`coffee_50x40.png`, `1000092795.jpg`), else the id plus `.jpg`
    (a bare Flickr30k number, `1000092795`)."""
    if Path(image_id).suffix.lower() in IMAGE_EXTENSIONS:
        return image_id
    return f"{image_id}.jpg"


def _gold(raw: Any) -> tuple[str | None, str | None]:
    label = _LABEL_WORDS.get(str(raw).strip().lower()) if raw is not None else None
    if label is None:
        return None, f"gold label {raw!r} is not one of {', '.join(LABELS)}"
    return label, None


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str | None]]:
    """(1-based number, line without its line break) of each non-blank line; the line is
    None where it is not UTF-8 (the reader turns it into an error row)."""
    number = 0
    for line in lines:
        line = line.rstrip("\r\n")
        if line.strip():
            number += 1
            yield number, None if _undecodable(line) else line


def read_snli_ve_jsonl(
    lines: Iterable[str], images_dir: Path | None, with_caption: bool = False
) -> Iterator[Pair]:
    """Pairs from SNLI-VE's JSONL; `images_dir` holds the Flickr30k images."""
    for number, line in _numbered(lines):
        if line is None:
            yield Pair(f"line-{number}", None, "", None, None, NOT_UTF8)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Pair(f"line-{number}", None, "", None, None, f"invalid JSON: {exc.msg}")
            continue
        if not isinstance(record, dict):
            yield Pair(f"line-{number}", None, "", None, None, "record is not a JSON object")
            continue
        pair_id = str(record.get("pairID") or f"line-{number}")
        image_name = next((record[k] for k in IMAGE_ID_KEYS if record.get(k)), None)
        gold, problem = _gold(record.get("gold_label"))
        hypothesis = record.get("sentence2")
        if image_name is None:
            problem = problem or f"no image id ({' or '.join(IMAGE_ID_KEYS[:2])})"
        elif images_dir is None:
            problem = problem or "the JSONL names Flickr30k images: give their folder (--images)"
        if not isinstance(hypothesis, str) or not hypothesis.strip():
            problem = problem or "HYPOTHESIS: is empty"
        image = None
        if image_name is not None and images_dir is not None:
            image = images_dir / image_file_name(str(image_name))
        premise = record.get("sentence1") if with_caption else None
        yield Pair(pair_id, image, hypothesis or "", premise, gold, problem)


def read_ofa_tsv(lines: Iterable[str], with_caption: bool = False) -> Iterator[Pair]:
    """Pairs from OFA's SNLI-VE TSV (six columns, or the five OFA selects)."""
    for number, line in _numbered(lines):
        if line is None:
            yield Pair(f"line-{number}", None, "", None, None, NOT_UTF8)
            continue
        cells = line.split("\t")
        if len(cells) == 6:
            uniq_id, _image_id, image_b64, hypothesis, caption, raw_label = cells
        elif len(cells) == 5:
            uniq_id, image_b64, hypothesis, caption, raw_label = cells
        else:
            reason = f"{len(cells)} tab-separated columns, expected 6 (or OFA's selected 5)"
            yield Pair(f"line-{number}", None, "", None, None, reason)
            continue
        gold, problem = _gold(raw_label)
        try:
            image: bytes | None = base64.urlsafe_b64decode(image_b64.strip())
        except (binascii.Error, ValueError) as exc:  # OFA's own loader refuses these too
            reason = f"IMAGE: the image column is not valid URL-safe base64 ({exc})"
            image, problem = None, problem or reason
        premise = caption if with_caption and caption.strip() else None
        yield Pair(uniq_id or f"line-{number}", image, hypothesis, premise, gold, problem)


GZIP_MAGIC = b"\x1f\x8b"


def text_lines(stream: Iterable[bytes]) -> Iterator[str]:
    """The lines of a UTF-8 file read in binary, decoded one by one: a byte-order mark
    at the start is dropped, and a line that is not UTF-8 keeps its bad bytes as lone
    surrogates (``surrogateescape``), so that the readers turn that one record into an
    error row instead of the whole run dying on it."""
    for number, raw in enumerate(stream):
        if number == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        yield raw.decode("utf-8", errors="surrogateescape")


def _undecodable(line: str) -> bool:
    """Whether ``line`` came from bytes that are not UTF-8 (see ``text_lines``)."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


NOT_UTF8 = "the line is not valid UTF-8"


def unique_ids(pairs: Iterable[Pair]) -> Iterator[Pair]:
    """The pairs with every id made unique: the second and later pairs carrying an id
    already seen get ``#2``, ``#3``... appended, in file order, so that a predictions
    file (and ``--resume``) keeps one row per pair even where a merged or hand-made
    dataset repeats a pairID."""
    seen: dict[str, int] = {}
    for pair in pairs:
        count = seen.get(pair.pair_id, 0) + 1
        seen[pair.pair_id] = count
        if count > 1:
            pair = dataclasses.replace(pair, pair_id=f"{pair.pair_id}#{count}")
            seen.setdefault(pair.pair_id, 1)
        yield pair


def read_pairs(
    path: Path,
    fmt: str,
    images_dir: Path | None = None,
    with_caption: bool = False,
) -> Iterator[Pair]:
    """Every pair of a dataset file, in file order, read as it is consumed, ids unique."""
    with open(path, "rb") as stream:
        lines = text_lines(stream)
        if fmt == "jsonl":
            yield from unique_ids(read_snli_ve_jsonl(lines, images_dir, with_caption))
        elif fmt == "tsv":
            yield from unique_ids(read_ofa_tsv(lines, with_caption))
        else:
            raise ValueError(f"unknown format {fmt!r} (jsonl or tsv)")


def count_pairs(path: Path) -> int:
    """Non-empty lines, for the progress bar (a byte scan: the TSV is large)."""
    with open(path, "rb") as stream:
        return sum(1 for line in stream if line.strip())


# ------------------------------------------------------------------------- scoring


@dataclass
class Scores:
    """Accuracy, per-class precision/recall and the confusion matrix, built pair by pair."""

    labels: tuple[str, ...] = LABELS
    confusion: list[list[int]] = field(default_factory=lambda: [[0] * 3 for _ in range(3)])
    errors: int = 0

    def add(self, gold: str, predicted: str) -> None:
        self.confusion[self.labels.index(gold)][self.labels.index(predicted)] += 1

    @property
    def scored(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def correct(self) -> int:
        return sum(self.confusion[i][i] for i in range(len(self.labels)))

    @property
    def accuracy(self) -> float | None:
        """Percent of scored pairs whose predicted label is the gold one."""
        return 100.0 * self.correct / self.scored if self.scored else None

    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for i, label in enumerate(self.labels):
            true_positive = self.confusion[i][i]
            predicted = sum(row[i] for row in self.confusion)
            support = sum(self.confusion[i])
            precision = true_positive / predicted if predicted else None
            recall = true_positive / support if support else None
            if true_positive == 0 and support:
                f1: float | None = 0.0  # gold pairs, none found: F1 is 0, not undefined
            elif precision is not None and recall is not None:
                f1 = 2 * precision * recall / (precision + recall)
            else:
                f1 = None
            out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "scored": self.scored,
            "correct": self.correct,
            "errors": self.errors,
            "per_class": self.per_class(),
            "confusion": {
                "rows": "gold",
                "columns": "predicted",
                "labels": list(self.labels),
                "matrix": [list(row) for row in self.confusion],
            },
        }


def prediction_row(pair: Pair, result: Prediction | VisualEntailmentError) -> dict[str, Any]:
    """One line of the predictions CSV."""
    row: dict[str, Any] = dict.fromkeys(PREDICTION_COLUMNS, "")
    row["pair_id"], row["gold"] = pair.pair_id, pair.gold or ""
    if isinstance(result, VisualEntailmentError):
        row["error"] = str(result)
        return row
    row["predicted"], row["answer"] = result.label, result.answer
    row["correct"] = int(result.label == pair.gold) if pair.gold else ""
    for label in LABELS:
        row[f"p_{label}"] = f"{result.probs[label]:.6f}"
    return row


def has_predictions(path: Path) -> bool:
    """Whether `path` holds anything to keep: a missing or empty file, or one holding
    only the predictions header, does not (a run that answered nothing may be rerun
    without --resume); any other file does."""
    if not path.exists():
        return False
    with open(path, "rb") as stream:
        lines = (line for line in stream if line.strip())
        first = next(lines, None)
        if first is None:
            return False
        if first.decode("utf-8", "replace").strip() != ",".join(PREDICTION_COLUMNS):
            return True
        return next(lines, None) is not None


def read_done(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an earlier run's predictions CSV that have an answer (resume keeps them;
    rows that failed are tried again)."""
    if not path.exists():
        return {}
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or list(reader.fieldnames) != list(PREDICTION_COLUMNS):
            raise InvalidInputError(
                f"{path} is not a predictions file of `ofa-ve evaluate` (its header differs); "
                "give another --out or remove it"
            )
        return {row["pair_id"]: row for row in reader if row["predicted"] and not row["error"]}


def score_rows(rows: Iterable[dict[str, str]], scores: Scores) -> None:
    """Add earlier answers (from `read_done`) to the scores: the caller passes the rows
    of the pairs it meets in the dataset, so that rows of another dataset count nowhere."""
    for row in rows:
        if row["gold"] in LABELS and row["predicted"] in LABELS:
            scores.add(row["gold"], row["predicted"])


def problem_error(pair: Pair) -> InvalidInputError:
    return InvalidInputError(pair.problem or "unusable record")


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report printed at the end of a run."""
    scores = summary["scores"]
    accuracy = scores["accuracy"]
    lines = [
        f"accuracy {accuracy:.2f} %" if accuracy is not None else "accuracy n/a (nothing scored)",
        f"pairs {summary['pairs']}: scored {scores['scored']}, correct {scores['correct']}, "
        f"errors {scores['errors']}"
        + (f", resumed {summary['resumed']}" if summary.get("resumed") else ""),
        f"throughput {summary['throughput_pairs_per_s']:.2f} pairs/s "
        f"({summary['sent']} sent in {summary['seconds']:.1f} s)",
        "",
        f"{'class':<14} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}",
    ]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

    for label, row in scores["per_class"].items():
        lines.append(
            f"{label:<14} {fmt(row['precision']):>9} {fmt(row['recall']):>7} "
            f"{fmt(row['f1']):>6} {row['support']:>8}"
        )
    labels: Sequence[str] = scores["confusion"]["labels"]
    lines += ["", "confusion (rows gold, columns predicted)"]
    lines.append(" " * 14 + "".join(f"{label:>14}" for label in labels))
    for label, counts in zip(labels, scores["confusion"]["matrix"], strict=True):
        lines.append(f"{label:<14}" + "".join(f"{n:>14}" for n in counts))
    return "\n".join(lines)
