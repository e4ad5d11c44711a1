"""`ofa-ve evaluate`: SNLI-VE's JSONL and OFA's TSV read as published, scored through a
real server, predictions equal to asking the SDK pair by pair, resumable.

The dataset here is small and generated in exactly the published formats: real
JPEG photos named like Flickr30k files, SNLI-VE records with `Flikr30kID` (the
generator's spelling), OFA's six-column TSV with URL-safe base64 images.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ofa_ve_client import LABELS, VisualEntailmentClient
from ofa_ve_client.cli.evaluation import (
    NOT_UTF8,
    PREDICTION_COLUMNS,
    Scores,
    format_report,
    read_ofa_tsv,
    read_pairs,
    read_snli_ve_jsonl,
)
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES

CLI = Path(sys.executable).with_name("ofa-ve")
PHOTOS = [
    TEST_IMAGES[name]
    for name in (
        "landscape_640x480_jpeg",
        "portrait_300x500_progressive_jpeg",
        "wide_1024x256_jpeg",
    )
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=300, check=False
    )


# ------------------------------------------------------------------------- units


def test_scores_from_a_known_confusion_matrix() -> None:
    scores = Scores()
    pairs = [
        ("entailment", "entailment"),
        ("entailment", "neutral"),
        ("neutral", "neutral"),
        ("contradiction", "contradiction"),
        ("contradiction", "entailment"),
    ]
    for gold, predicted in pairs:
        scores.add(gold, predicted)
    assert scores.scored == 5 and scores.correct == 3
    assert scores.accuracy == pytest.approx(60.0)
    per_class = scores.per_class()
    assert per_class["entailment"]["precision"] == pytest.approx(0.5)  # 1 of 2 predicted
    assert per_class["entailment"]["recall"] == pytest.approx(0.5)  # 1 of 2 gold
    assert per_class["neutral"]["precision"] == pytest.approx(0.5)
    assert per_class["neutral"]["recall"] == pytest.approx(1.0)
    assert per_class["contradiction"]["precision"] == pytest.approx(1.0)
    assert per_class["contradiction"]["f1"] == pytest.approx(2 / 3)
    assert scores.to_dict()["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert Scores().accuracy is None and "n/a" in format_report(
        {
            "scores": Scores().to_dict(),
            "pairs": 0,
            "sent": 0,
            "seconds": 0.0,
            "throughput_pairs_per_s": 0.0,
        }
    )


def test_snli_ve_jsonl_records_as_the_generator_writes_them(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "Flikr30kID": "36979.jpg",
                "gold_label": "neutral",
                "pairID": "36979.jpg#0r1n",
                "sentence1": "A group of friends playing cards.",
                "sentence2": "They are playing poker.",
            }
        ),
        json.dumps({"Flickr30kID": "1", "gold_label": "yes", "pairID": "p", "sentence2": "h"}),
        json.dumps({"Flikr30kID": "2.jpg", "gold_label": "-", "pairID": "q", "sentence2": "h"}),
        json.dumps({"gold_label": "neutral", "pairID": "r", "sentence2": "h"}),
        "{broken",
    ]
    pairs = list(read_snli_ve_jsonl(lines, tmp_path, with_caption=True))
    assert pairs[0].image == tmp_path / "36979.jpg" and pairs[0].gold == "neutral"
    assert pairs[0].premise == "A group of friends playing cards." and pairs[0].problem is None
    assert pairs[1].image == tmp_path / "1.jpg" and pairs[1].gold == "entailment"
    assert "gold label" in pairs[2].problem
    assert "image id" in pairs[3].problem
    assert "invalid JSON" in pairs[4].problem
    without = next(read_snli_ve_jsonl(lines[:1], None))
    assert "--images" in without.problem and without.premise is None


def test_ofa_tsv_rows_six_and_five_columns() -> None:
    image = base64.urlsafe_b64encode(PHOTOS[0].read_bytes()).decode()
    rows = [
        "\t".join(["7", "36979", image, "two dogs run", "dogs in snow", "contradiction"]),
        "\t".join(["8", image, "two dogs run", "dogs in snow", "entailment"]),
        "\t".join(["9", "x", "!!not base64!!", "h", "c", "neutral"]),
        "too\tfew",
    ]
    pairs = list(read_ofa_tsv(io.StringIO("\n".join(rows) + "\n")))
    assert pairs[0].pair_id == "7" and pairs[0].image == PHOTOS[0].read_bytes()
    assert pairs[0].gold == "contradiction" and pairs[0].premise is None
    assert pairs[1].pair_id == "8" and pairs[1].gold == "entailment" and pairs[1].problem is None
    assert "base64" in pairs[2].problem
    assert "columns" in pairs[3].problem
    assert next(read_ofa_tsv(rows[:1], with_caption=True)).premise == "dogs in snow"


def test_a_class_with_gold_pairs_none_found_has_f1_zero() -> None:
    scores = Scores()
    scores.add("entailment", "neutral")
    scores.add("neutral", "neutral")
    per_class = scores.per_class()
    assert per_class["entailment"]["f1"] == 0.0 and per_class["entailment"]["precision"] is None
    assert per_class["contradiction"]["f1"] is None  # no gold pairs, none predicted


def _record(pair_id: str, image: str = "1000.jpg") -> str:
    fields = {"Flikr30kID": image, "gold_label": "neutral", "pairID": pair_id, "sentence2": "h"}
    return json.dumps(fields)


def test_dataset_files_with_a_bom_a_bad_byte_and_repeated_ids(tmp_path: Path) -> None:
    """A byte-order mark is dropped (the first record keeps its id); a line that is not
    UTF-8 is one error row, the records around it are read; a repeated pairID gets #2."""
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf" + _record("first").encode() + b"\n"
        + b'{"pairID": "caf\xe9", "sentence2": "latin-1"}\r\n'
        + _record("first").encode() + b"\n" + _record("last").encode() + b"\n\n"
    )  # fmt: skip
    pairs = list(read_pairs(jsonl, "jsonl", tmp_path))
    assert [p.pair_id for p in pairs] == ["first", "line-2", "first#2", "last"]
    assert pairs[0].problem is None and pairs[0].gold == "neutral"
    assert pairs[1].problem == NOT_UTF8 and pairs[3].problem is None
    image = base64.urlsafe_b64encode(b"jpeg bytes").decode()
    tsv = tmp_path / "d.tsv"
    tsv.write_bytes(
        b"\xef\xbb\xbf" + "\t".join(["7", image, "h", "c", "neutral"]).encode() + b"\n"
        + b"8\t" + image.encode() + b"\th\xff\tc\tneutral\n"
        + "\t".join(["7", image, "h", "c", "neutral"]).encode() + b"\n"
    )  # fmt: skip
    pairs = list(read_pairs(tsv, "tsv"))
    assert [p.pair_id for p in pairs] == ["7", "line-2", "7#2"]
    assert pairs[0].image == b"jpeg bytes" and pairs[1].problem == NOT_UTF8


# ------------------------------------------------------------------------- through a server


def _dataset(tmp_path: Path, n: int = 7) -> tuple[Path, Path, list[dict]]:
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    records = []
    for i in range(n):
        photo_id = 1000 + i % len(PHOTOS)
        shutil.copy(PHOTOS[i % len(PHOTOS)], images / f"{photo_id}.jpg")
        records.append(
            {
                "Flikr30kID": f"{photo_id}.jpg",
                "gold_label": LABELS[i % 3],
                "pairID": f"{photo_id}.jpg#{i}r1{LABELS[i % 3][0]}",
                "sentence1": "A photograph.",
                "sentence2": HYPOTHESES[i % len(HYPOTHESES)],
            }
        )
    data = tmp_path / "snli_ve_test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return data, images, records


def _predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == list(PREDICTION_COLUMNS)
        return list(reader)


def _check_against_the_sdk(rows: list[dict[str, str]], wanted: dict[str, tuple], url: str):
    with VisualEntailmentClient(url) as client:
        for row in rows:
            image, hypothesis = wanted[row["pair_id"]]
            want = client.predict(image, hypothesis)
            assert row["predicted"] == want.label, row
            for label in LABELS:
                assert float(row[f"p_{label}"]) == pytest.approx(want.probs[label], abs=1e-5)


def test_evaluate_snli_ve_jsonl(tiny_server, tmp_path: Path) -> None:
    data, images, records = _dataset(tmp_path)
    # One record whose photo is missing from the folder: an error row, not a crash.
    missing = dict(records[0], Flikr30kID="999.jpg", pairID="999.jpg#0r1e")
    with data.open("a") as fh:
        fh.write(json.dumps(missing) + "\n")
    out = tmp_path / "preds.csv"
    result = run(
        "evaluate", str(data), "--images", str(images), "--out", str(out),
        "--url", tiny_server.grpc_url, "--no-progress", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # the missing photo
    summary = json.loads(result.stdout)
    assert summary == json.loads((tmp_path / "preds.summary.json").read_text())
    rows = _predictions(out)
    assert [r["pair_id"] for r in rows] == [r["pairID"] for r in [*records, missing]]
    assert "no such file" in rows[-1]["error"] and rows[-1]["predicted"] == ""
    answered = rows[:-1]
    correct = sum(r["predicted"] == r["gold"] for r in answered)
    scores = summary["scores"]
    assert scores["scored"] == len(records) and scores["errors"] == 1
    assert scores["correct"] == correct == sum(int(r["correct"]) for r in answered)
    assert scores["accuracy"] == pytest.approx(100.0 * correct / len(records))
    assert sum(map(sum, scores["confusion"]["matrix"])) == len(records)
    assert summary["sent"] == len(records) + 1 and summary["throughput_pairs_per_s"] > 0
    wanted = {r["pairID"]: (images / r["Flikr30kID"], r["sentence2"]) for r in records}
    _check_against_the_sdk(answered, wanted, tiny_server.grpc_url)

    report = run(
        "evaluate", str(data), "--images", str(images), "--limit", "2",
        "--url", tiny_server.grpc_url, "--no-progress",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("accuracy ") and " %" in report.stdout.splitlines()[0]
    assert "confusion (rows gold, columns predicted)" in report.stdout


def test_evaluate_ofa_tsv_and_resume(tiny_server, tmp_path: Path) -> None:
    data = tmp_path / "snli_ve_test.tsv"
    wanted = {}
    lines = []
    for i in range(6):
        photo = PHOTOS[i % len(PHOTOS)]
        encoded = base64.urlsafe_b64encode(photo.read_bytes()).decode()
        hypothesis = HYPOTHESES[i % len(HYPOTHESES)].strip()
        lines.append(
            "\t".join([str(i), str(i % 3), encoded, hypothesis, "a caption", LABELS[i % 3]])
        )
        wanted[str(i)] = (photo, hypothesis)
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds.csv"
    common = ("--out", str(out), "--url", tiny_server.grpc_url, "--no-progress", "--json")
    first = run("evaluate", str(data), "--limit", "2", *common)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["sent"] == 2
    before = _predictions(out)
    again = run("evaluate", str(data), *common)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites silently
    resumed = run("evaluate", str(data), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] == 2 and summary["sent"] == 4 and summary["pairs"] == 6
    assert summary["scores"]["scored"] == 6
    rows = _predictions(out)
    assert rows[:2] == before and sorted(r["pair_id"] for r in rows) == [str(i) for i in range(6)]
    _check_against_the_sdk(rows, wanted, tiny_server.grpc_url)


def test_evaluate_survives_damaged_files_and_resumes_only_its_own_pairs(
    tiny_server, tmp_path: Path
) -> None:
    data, images, records = _dataset(tmp_path, n=4)
    lines = data.read_bytes().splitlines(keepends=True)
    # A BOM, a line that is not UTF-8 in the middle, and a repeated pairID.
    data.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\xff\xfe not text\n" + b"".join(lines[1:])
                     + lines[0])  # fmt: skip
    out = tmp_path / "preds.csv"
    common = ("--images", str(images), "--url", tiny_server.grpc_url, "--no-progress", "--json")
    result = run("evaluate", str(data), "--out", str(out), *common)
    assert result.returncode == 1, result.stderr  # the undecodable line
    assert f"failed: line-2: {NOT_UTF8}" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["pairs"] == 6 and summary["scores"]["scored"] == 5
    ids = [r["pair_id"] for r in _predictions(out)]
    first = records[0]["pairID"]
    assert ids == [first, "line-2", *[r["pairID"] for r in records[1:]], f"{first}#2"]
    # Resumed against a different dataset (two of the same pairs): only those two count.
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join(lines[:2]))
    resumed = run("evaluate", str(other), "--out", str(out), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(resumed.stdout)
    assert again["resumed"] == 2 and again["sent"] == 0 and again["scores"]["scored"] == 2
    assert again["kept_not_in_dataset"] == 3 and "not scored" in resumed.stderr


def test_evaluate_refuses_a_gzip_file_and_a_jsonl_without_images(tiny_server, tmp_path: Path):
    import gzip

    data, images, _ = _dataset(tmp_path, n=2)
    packed = tmp_path / "snli_ve_test.jsonl.gz"
    packed.write_bytes(gzip.compress(data.read_bytes()))
    url = ("--url", tiny_server.grpc_url, "--no-progress")
    refused = run("evaluate", str(packed), "--format", "jsonl", "--images", str(images), *url)
    assert refused.returncode == 2 and "gzip-compressed" in refused.stderr
    no_images = run("evaluate", str(data), *url)
    assert no_images.returncode == 2 and "--images" in no_images.stderr
