"""The `ofa-ve` command (predict, batch, health), run as a subprocess against a real server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ofa_ve_client import LABELS, VisualEntailmentClient
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from support.waiting import settled

CLI = Path(sys.executable).with_name("ofa-ve")  # the console script `pip install` made
IMAGE = TEST_IMAGES["tiny_50x40_png"]


def run(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    assert CLI.exists(), f"{CLI} missing: install the client (pip install -e client)"
    return subprocess.run(
        [str(CLI), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dead_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_help_and_version():
    out = run("--help")
    assert out.returncode == 0
    for command in ("predict", "batch", "health"):
        assert command in out.stdout
    for command in ("predict", "batch", "health"):
        sub = run(command, "--help")
        assert sub.returncode == 0 and "--url" in sub.stdout and "--ssl" in sub.stdout
    assert run("--version").stdout.startswith("ofa-ve ")
    assert run("predict").returncode == 2  # missing arguments: usage error


def test_predict_prints_one_json_object(tiny_server):
    out = run("predict", str(IMAGE), HYPOTHESES[0], "--url", tiny_server.grpc_url)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == {"label", "answer", "score", "probs"}
    assert result["label"] in LABELS and list(result["probs"]) == list(LABELS)
    with VisualEntailmentClient(tiny_server.grpc_url) as client:
        want = client.predict(IMAGE, HYPOTHESES[0], premise="A cup.")
    out = run(
        "predict",
        str(IMAGE),
        HYPOTHESES[0],
        "--premise",
        "A cup.",
        "--url",
        tiny_server.grpc_url,
        "--compression",
        "gzip",
        "--timeout",
        "30",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["probs"] == pytest.approx(dict(want.probs), abs=1e-5)


def test_predict_bad_input_exits_1_with_a_json_error(tiny_server, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    out = run("predict", str(bad), "anything", "--url", tiny_server.grpc_url)
    assert out.returncode == 1
    assert out.stdout == ""
    error = json.loads(out.stderr)["error"]
    assert error["type"] == "InvalidInputError"
    assert error["status"] == "INVALID_ARGUMENT" and error["input"] == "IMAGE"


def _rows(tmp_path: Path) -> list[dict]:
    # Relative image paths are relative to the input file: copy two images next to it.
    (tmp_path / "imgs").mkdir()
    for name in ("tiny_50x40_png", "bmp_120x80"):
        (tmp_path / "imgs" / TEST_IMAGES[name].name).write_bytes(TEST_IMAGES[name].read_bytes())
    (tmp_path / "imgs" / "broken.png").write_bytes(b"broken")
    a, b = (f"imgs/{TEST_IMAGES[n].name}" for n in ("tiny_50x40_png", "bmp_120x80"))
    return [
        {"image": a, "hypothesis": HYPOTHESES[0]},
        {"image": b, "hypothesis": HYPOTHESES[1], "premise": "A cup on a table."},
        {"image": "imgs/broken.png", "hypothesis": HYPOTHESES[2]},
        {"image": str(TEST_IMAGES["gray_256x256_png"]), "hypothesis": HYPOTHESES[3]},
        {"image": a, "hypothesis": ""},
        {"image": b, "hypothesis": HYPOTHESES[4]},
    ]


def _check_batch_output(lines: list[dict], rows: list[dict], url: str, base: Path) -> None:
    assert [line["index"] for line in lines] == list(range(len(rows)))
    assert "error" in lines[2] and lines[2]["error"]["input"] == "IMAGE"
    assert "error" in lines[4] and lines[4]["error"]["input"] == "HYPOTHESIS"
    with VisualEntailmentClient(url) as client:
        for i in (1, 3):  # a relative path with a premise, an absolute path
            row = rows[i]
            image = Path(row["image"]) if Path(row["image"]).is_absolute() else base / row["image"]
            want = client.predict(image, row["hypothesis"], row.get("premise"))
            assert lines[i]["label"] == want.label
            assert lines[i]["probs"] == pytest.approx(dict(want.probs), abs=1e-5)
            assert lines[i]["hypothesis"] == row["hypothesis"]


def test_batch_jsonl_to_file_with_progress(tiny_server, tmp_path):
    rows = _rows(tmp_path)
    source = tmp_path / "rows.jsonl"
    text = "\n".join(json.dumps(r) for r in rows[:3]) + "\n{not json\n"
    text += "\n".join(json.dumps(r) for r in rows[3:]) + "\n"
    source.write_text(text)
    target = tmp_path / "out.jsonl"
    out = run(
        "batch",
        str(source),
        "--output",
        str(target),
        "--url",
        tiny_server.grpc_url,
        "--concurrency",
        "2",
        "--batch-size",
        "2",
        "--progress",
    )
    assert out.returncode == 1  # some rows failed
    assert "7/7" in out.stderr  # the progress bar reached the end
    assert "4 ok, 3 failed" in out.stderr
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(lines) == 7
    assert lines[3]["error"]["message"].startswith("invalid JSON")
    del lines[3]
    for line in lines[3:]:
        line["index"] -= 1
    _check_batch_output(lines, rows, tiny_server.grpc_url, tmp_path)


def test_batch_csv_with_header_to_stdout(tiny_server, tmp_path):
    rows = _rows(tmp_path)
    source = tmp_path / "rows.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "hypothesis", "premise"])
        for r in rows:
            writer.writerow([r["image"], r["hypothesis"], r.get("premise", "")])
    out = run("batch", str(source), "--url", tiny_server.grpc_url, "--no-progress")
    assert out.returncode == 1
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == len(rows)
    _check_batch_output(lines, rows, tiny_server.grpc_url, tmp_path)


def test_batch_all_good_exits_0(tiny_server):
    rows = [f"{IMAGE},{HYPOTHESES[i]}" for i in range(3)]  # CSV without a header, from stdin
    out = run(
        "batch",
        "-",
        "--format",
        "csv",
        "--url",
        tiny_server.grpc_url,
        stdin="\n".join(rows) + "\n",
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["index"] for line in out.stdout.splitlines()] == [0, 1, 2]


def test_health(tiny_server):
    out = run("health", "--url", tiny_server.grpc_url)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ready"] is True and report["max_batch_size"] >= 32
    assert report["servers"][0]["model_ready"] is True
    down = run("health", "--url", dead_url(), "--timeout", "5")
    assert down.returncode == 1
    assert json.loads(down.stdout)["ready"] is False


def test_default_url_from_environment(tiny_server):
    import os

    env = dict(os.environ, OFA_VE_URL=tiny_server.grpc_url)
    out = subprocess.run(
        [str(CLI), "health"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["servers"][0]["url"] == tiny_server.grpc_url


def test_connection_flags_before_the_command(tiny_server):
    """`ofa-ve --url HOST:PORT health` works as well as `ofa-ve health --url HOST:PORT`,
    and a --url on each side adds up (both servers are asked)."""
    before = run("--url", tiny_server.grpc_url, "--timeout", "30", "health")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["servers"][0]["url"] == tiny_server.grpc_url
    both = run("--url", tiny_server.grpc_url, "health", "--url", dead_url(), "--timeout", "5")
    urls = [s["url"] for s in json.loads(both.stdout)["servers"]]
    assert both.returncode == 0 and len(urls) == 2 and urls[0] == tiny_server.grpc_url


def test_connection_errors_say_what_to_do(tiny_server, tmp_path):
    """Nothing listening, or Triton's HTTP port given for the gRPC one: the error names
    the likely cause and the fix, not only gRPC's words."""
    args = ("--timeout", "10", "--retries", "0")
    down = run("predict", str(IMAGE), HYPOTHESES[0], "--url", dead_url(), *args)
    assert down.returncode == 1
    error = json.loads(down.stderr)["error"]
    assert error["type"] == "ServerUnavailableError"
    assert "make serve" in error["hint"] and "8001" in error["hint"], error
    http = run("predict", str(IMAGE), HYPOTHESES[0], "--url", tiny_server.http_url, *args)
    assert http.returncode == 1
    error = json.loads(http.stderr)["error"]
    assert "HTTP port" in error.get("hint", ""), error
    health = json.loads(run("health", "--url", dead_url(), *args).stdout)
    assert "hint: " in health["servers"][0]["error"]


def test_batch_keeps_ids_gold_labels_and_empty_fields(tiny_server, tmp_path):
    """A dataset as it comes (an id first, a gold label, an empty premise) runs as it is
    and comes back whole beside each prediction."""
    source = tmp_path / "dataset.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["pair_id", "image", "hypothesis", "label", "premise"])
        writer.writerow(["a-1", str(IMAGE), HYPOTHESES[0], "entailment", ""])
        writer.writerow(["a-2", str(IMAGE), "", "neutral", ""])
        writer.writerow(["a-3", str(IMAGE), HYPOTHESES[1], "contradiction", "A cup."])
    out = run("batch", str(source), "--url", tiny_server.grpc_url, "--no-progress")
    assert out.returncode == 1, out.stderr  # row a-2 has no hypothesis
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["pair_id"] for line in lines] == ["a-1", "a-2", "a-3"]
    assert [line["input_label"] for line in lines] == ["entailment", "neutral", "contradiction"]
    assert lines[0]["premise"] == "" and lines[1]["hypothesis"] == ""
    assert lines[1]["error"]["input"] == "HYPOTHESIS" and "label" not in lines[1]
    with VisualEntailmentClient(tiny_server.grpc_url) as client:
        for line, premise in ((lines[0], None), (lines[2], "A cup.")):
            want = client.predict(IMAGE, line["hypothesis"], premise)
            assert line["label"] == want.label
            assert line["probs"] == pytest.approx(dict(want.probs), abs=1e-5)


def test_batch_progress_moves_item_by_item(tiny_server, tmp_path):
    """With the bar shown each answer is one item (single-item requests, as many items in
    flight as with full ones); without it, few full requests. Counted by the server."""
    from support.prometheus import metric, scrape

    rows = "".join(f"{IMAGE},{HYPOTHESES[i]}\n" for i in range(5))
    source = tmp_path / "rows.csv"
    source.write_text(rows)

    def count() -> float:
        name, model = "nv_inference_request_success", "ofa_visual_entailment"
        return metric(scrape(tiny_server.metrics_url), name, model=model)

    def booked() -> float:
        """The count once every earlier request is in it. Triton books a request after
        its response has left; one request more, answered and then seen booked, was
        executed by the single instance after all of them, so they are booked too."""
        first = count()
        with VisualEntailmentClient(tiny_server.grpc_url) as client:
            client.predict(IMAGE, HYPOTHESES[0])
        return settled(count, lambda n: n >= first + 1, "the marker request booked") - 1

    def requests_for(*flags: str) -> tuple[int, subprocess.CompletedProcess[str]]:
        before = booked() + 1  # the marker itself
        out = run("batch", str(source), "--url", tiny_server.grpc_url, *flags)
        assert out.returncode == 0, out.stderr
        return int(booked() - before), out

    per_item, shown = requests_for("--progress")
    assert per_item == 5 and "5/5" in shown.stderr
    whole, _ = requests_for("--no-progress")
    assert whole == 1
    chosen, _ = requests_for("--progress", "--batch-size", "2")
    assert chosen == 3  # an explicit --batch-size is kept
