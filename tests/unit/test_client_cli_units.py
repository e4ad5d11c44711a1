"""The CLI's and the SDK's behaviour that needs no server: the one base under both
clients (driven by fake channels), the error families, and the fixes for what a new
user tripped on (image ids with an extension, a failed evaluate's output, the label
split, CSV headers and stdin formats, `batch --resume`, one wording per error)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ofa_ve_client as ove
import pytest
from ofa_ve_client.classification import ZeroShotQuery, check_labels
from ofa_ve_client.cli import commands, main
from ofa_ve_client.cli.batch_io import peek_format, read_done, read_rows
from ofa_ve_client.cli.evaluation import PREDICTION_COLUMNS, read_snli_ve_jsonl
from ofa_ve_client.errors import from_status
from ofa_ve_client.items import encode_text
from tritonclient.utils import InferenceServerException

ANSWER = ove.Prediction.from_outputs("entailment", "yes", [0.7, 0.2, 0.1])


def free_port() -> int:
    """A loopback port with nothing listening (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------- the one base


class FakeChannel:
    """A tritonclient client whose get_model_config fails `failures` times first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    def get_model_config(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise InferenceServerException("down", status="StatusCode.UNAVAILABLE")
        return {"config": {"max_batch_size": 8}}

    def close(self) -> None:
        pass


class AsyncFakeChannel(FakeChannel):
    async def get_model_config(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return super().get_model_config(*args, **kwargs)

    async def close(self) -> None:  # type: ignore[override]
        pass


POLICY = ove.RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)


def test_sync_client_retries_and_fails_over_through_the_base():
    client = ove.VisualEntailmentClient(["127.0.0.1:1", "127.0.0.1:2"], retry=POLICY, timeout=5)
    first, second = FakeChannel(failures=1), FakeChannel()
    client._clients = [first, second]
    assert client.max_batch_size() == 8 and client.max_batch_size() == 8  # read once
    assert (first.calls, second.calls) == (1, 1)  # the retry moved to the next URL
    client.close()
    with pytest.raises(ove.ClientClosedError):
        client.model_config()


def test_async_client_runs_the_same_steps_awaited():
    async def scenario() -> tuple[int, int, int]:
        client = ove.AsyncVisualEntailmentClient(
            ["127.0.0.1:1", "127.0.0.1:2"], retry=POLICY, timeout=5
        )
        first, second = AsyncFakeChannel(failures=1), AsyncFakeChannel()
        client._clients = [first, second]  # type: ignore[list-item]
        size = await client.max_batch_size()
        await client.close()
        with pytest.raises(ove.ClientClosedError):
            await client.model_config()
        return size, first.calls, second.calls

    assert asyncio.run(scenario()) == (8, 1, 1)


def test_a_client_that_cannot_connect_says_so_in_both_forms():
    url = f"127.0.0.1:{free_port()}"
    client = ove.VisualEntailmentClient(url, retry=ove.RetryPolicy.disabled(), timeout=5)
    with client, pytest.raises(ove.ServerUnavailableError):
        client.predict_batch([(b"x", "h")])

    async def scenario() -> None:
        async with ove.AsyncVisualEntailmentClient(
            url, retry=ove.RetryPolicy.disabled(), timeout=5
        ) as client:
            with pytest.raises(ove.ServerUnavailableError):
                await client.predict_batch([(b"x", "h")])

    asyncio.run(scenario())


# ----------------------------------------------------------------- error families


@pytest.mark.parametrize(
    ("family", "members"),
    [
        (ove.InvalidInputError, (ove.ImageFetchError,)),
        (
            ove.UnavailableError,
            (ove.ServerUnavailableError, ove.ModelNotReadyError, ove.ResourceExhaustedError),
        ),
        (
            ove.CallAbortedError,
            (ove.DeadlineExceededError, ove.RequestCancelledError, ove.ClientClosedError),
        ),
        (
            ove.ServerSideError,
            (ove.ServerError, ove.ModelNotFoundError, ove.AuthenticationError, ove.ProtocolError),
        ),
    ],
)
def test_every_error_class_belongs_to_its_status_family(family, members):
    assert issubclass(family, ove.VisualEntailmentError)
    for member in members:
        assert issubclass(member, family)


def test_old_names_catch_exactly_what_they_caught():
    # Grouping added bases above the classes; no old name catches a new case.
    assert not issubclass(ove.ResourceExhaustedError, ove.ServerUnavailableError)
    assert not issubclass(ove.AuthenticationError, ove.ServerUnavailableError)
    assert not issubclass(ove.ModelNotFoundError, ove.ServerError)
    assert issubclass(ove.DeadlineExceededError, TimeoutError)
    assert issubclass(ove.ServerUnavailableError, ConnectionError)
    assert issubclass(ove.InvalidInputError, ValueError)
    by_status = {
        "INVALID_ARGUMENT": ove.InvalidInputError,
        "UNAVAILABLE": ove.UnavailableError,
        "RESOURCE_EXHAUSTED": ove.UnavailableError,
        "DEADLINE_EXCEEDED": ove.CallAbortedError,
        "CANCELLED": ove.CallAbortedError,
        "INTERNAL": ove.ServerSideError,
        "NOT_FOUND": ove.ServerSideError,
        "UNAUTHENTICATED": ove.ServerSideError,
    }
    for status, family in by_status.items():
        assert isinstance(from_status(status, "m"), family), status


# ----------------------------------------------------------------- evaluate


def test_evaluate_uses_image_ids_with_an_extension_as_they_are(tmp_path: Path):
    records = [
        {"Flikr30kID": "coffee_50x40.png", "sentence2": "A cup.", "gold_label": "neutral"},
        {"Flikr30kID": "1000092795", "sentence2": "A dog.", "gold_label": "neutral"},
        {"Flickr30kID": "1000092795.JPG", "sentence2": "A dog.", "gold_label": "neutral"},
        {"Flikr30kID": "scan.v2", "sentence2": "A dog.", "gold_label": "neutral"},
    ]
    pairs = list(read_snli_ve_jsonl([json.dumps(r) for r in records], tmp_path))
    assert [p.image for p in pairs] == [
        tmp_path / "coffee_50x40.png",
        tmp_path / "1000092795.jpg",
        tmp_path / "1000092795.JPG",
        tmp_path / "scan.v2.jpg",
    ]


def evaluate_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    data = tmp_path / "pairs.jsonl"
    record = {"Flikr30kID": "a.png", "sentence2": "A cup.", "gold_label": "neutral"}
    data.write_text(json.dumps(record) + "\n", encoding="utf-8")
    (tmp_path / "a.png").write_bytes(b"not read: no server answers")
    url = f"127.0.0.1:{free_port()}"
    return [
        "evaluate", str(data), "--images", str(tmp_path), "--out", str(out),
        "--url", url, "--retries", "0", "--timeout", "5", "--no-progress", *extra,
    ]  # fmt: skip


def test_a_failed_evaluate_leaves_no_file_and_blocks_no_rerun(tmp_path: Path, capsys):
    out = tmp_path / "p3.csv"
    assert main(evaluate_args(tmp_path, out)) == 1  # no server: nothing answered
    assert "ServerUnavailableError" in capsys.readouterr().err
    assert not out.exists()
    # A header-only file (from an earlier release) is no reason to refuse a rerun.
    out.write_text(",".join(PREDICTION_COLUMNS) + "\n", encoding="utf-8")
    assert main(evaluate_args(tmp_path, out)) == 1
    assert "exists" not in capsys.readouterr().err
    assert not out.exists()
    # A file with answers is still kept and still needs --resume.
    out.write_text(",".join(PREDICTION_COLUMNS) + "\nx,neutral,neutral,maybe,1,0.1,0.8,0.1,\n")
    with pytest.raises(SystemExit) as exit_:
        main(evaluate_args(tmp_path, out))
    assert exit_.value.code == 2 and "--resume" in capsys.readouterr().err
    assert main(evaluate_args(tmp_path, out, "--resume")) == 1
    assert "x,neutral,neutral" in out.read_text()  # kept across a failed resume
    # Nor is a file of something else overwritten.
    other = tmp_path / "notes.csv"
    other.write_text("my,own,notes\n")
    with pytest.raises(SystemExit):
        main(evaluate_args(tmp_path, other))
    assert other.read_text() == "my,own,notes\n"


# ----------------------------------------------------------------- a fake client


class FakeClient:
    """What the commands use of VisualEntailmentClient, answering without a server."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.labels: list[str] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def max_batch_size(self) -> int:
        return 4

    def predict_batch(self, items: Iterable[Any], **options: Any) -> list[ove.Prediction]:
        items = list(items)
        self.sent.extend(items)
        if options.get("progress") and items:
            options["progress"](len(items))
        return [ANSWER for _ in items]

    def classify(self, image: Any, labels: list[str], template: str, multi: bool, **kw: Any):
        self.labels = list(labels)
        query = ZeroShotQuery.build(labels, template, multi, kw.get("premise"))
        return query.result([ANSWER] * len(query.labels))


@pytest.fixture
def fake(monkeypatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(commands, "make_client", lambda *args, **kwargs: client)
    return client


def test_classify_splits_labels_on_commas_in_the_cli_as_in_the_sdk(fake, capsys):
    assert main(["classify", "img.png", "cat,dog", "a bird", "--json"]) == 0
    assert fake.labels == ["cat", "dog", "a bird"]
    assert json.loads(capsys.readouterr().out)["labels"] == ["cat", "dog", "a bird"]
    assert check_labels("cat,dog") == ("cat", "dog")  # the SDK's string: the same rule
    with pytest.raises(SystemExit) as exit_:
        main(["classify", "img.png", "cat,dog", "dog"])
    assert exit_.value.code == 2 and "duplicate label 'dog'" in capsys.readouterr().err


def test_batch_resume_sends_only_the_rows_not_answered(fake, tmp_path: Path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"image": f"{i}.png", "hypothesis": f"h{i}"}) + "\n" for i in range(3))
    )
    out = tmp_path / "out.jsonl"
    answered = {"index": 0, "image": "0.png", "hypothesis": "h0", **ANSWER.to_dict()}
    failed = {"index": 1, "image": "1.png", "hypothesis": "h1", "error": {"message": "m"}}
    out.write_text(json.dumps(answered) + "\n" + json.dumps(failed) + '\n{"index": 2, "lab')
    args = ["batch", str(rows), "--output", str(out), "--no-progress", "--resume"]
    assert main(args) == 0
    assert [Path(item["image"]).name for item in fake.sent] == ["1.png", "2.png"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert all("error" not in line for line in lines)
    assert "2 ok, 0 failed, 1 kept" in capsys.readouterr().err
    assert sorted(read_done(str(out))) == [0, 1, 2]
    # Everything answered: a rerun sends nothing.
    fake.sent.clear()
    assert main(args) == 0 and fake.sent == []
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(rows), "--resume"])
    assert exit_.value.code == 2 and "--resume needs --output" in capsys.readouterr().err


def test_csv_on_stdin_without_format_gets_a_hint(fake, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("image,hypothesis\na.png,A cup.\n"))
    with pytest.raises(SystemExit) as exit_:
        main(["batch", "-"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--format csv" in err and "invalid JSON" not in err
    assert fake.sent == []
    monkeypatch.setattr("sys.stdin", io.StringIO('\n{"image": "a.png", "hypothesis": "h"}\n'))
    assert main(["batch", "-", "--no-progress"]) == 0 and len(fake.sent) == 1
    assert json.loads(capsys.readouterr().out)["label"] == "entailment"


def test_stdin_format_is_told_by_its_first_line():
    fmt, lines = peek_format(["\n", '{"image": 1}\n', "x\n"])
    assert fmt == "jsonl" and list(lines) == ["\n", '{"image": 1}\n', "x\n"]
    fmt, lines = peek_format(["image,hypothesis\n"])
    assert fmt is None and list(lines) == ["image,hypothesis\n"]
    assert peek_format([])[0] == "jsonl"


@pytest.mark.parametrize("header", ["img,text", "image,text", "path,sentence,premise"])
def test_an_unrecognised_csv_header_is_refused_naming_the_columns(header):
    with pytest.raises(ove.InvalidInputError) as error:
        list(read_rows(io.StringIO(f"{header}\na.jpg,A cup.\n"), "csv"))
    message = str(error.value)
    assert repr(header) in message
    assert all(column in message for column in ("image", "hypothesis", "premise"))


@pytest.mark.parametrize(
    "first_row", ["a.jpg,A cup.", "photos/1,dog", "https://x.org/a,dog", "1.png,cat,p"]
)
def test_a_headerless_csv_still_starts_with_data(first_row):
    (row,) = read_rows(io.StringIO(first_row + "\n"), "csv")
    assert row.error is None and row.index == 0


def test_batch_and_the_sdk_word_a_missing_or_empty_input_alike():
    rows = list(
        read_rows(
            io.StringIO('{"image": "a.png", "hypothesis": "  "}\n{"image": "a.png"}\n'), "jsonl"
        )
    )
    with pytest.raises(ove.InvalidInputError) as empty:
        encode_text("  ", "HYPOTHESIS", required=True)
    assert rows[0].error.message == empty.value.message == "HYPOTHESIS: is empty"
    assert rows[0].error.input_name == "HYPOTHESIS"
    assert rows[1].error.message == "HYPOTHESIS: missing from the item"
    (csv_row,) = read_rows(io.StringIO("image,hypothesis\n,h\n"), "csv")
    assert csv_row.error.message == "IMAGE: is empty"
