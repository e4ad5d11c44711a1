"""The client's pure logic (no server): backoff, deadlines, error mapping, parsing, config."""

from __future__ import annotations

import io
import pickle

import pytest
from ofa_ve_client import (
    AuthenticationError,
    DeadlineExceededError,
    ImageFetchError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    Prediction,
    ProtocolError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    VisualEntailmentClient,
)
from ofa_ve_client.cli.batch_io import detect_format, item_of, output_record, read_rows
from ofa_ve_client.errors import from_triton
from ofa_ve_client.retry import CallBudget
from tritonclient.utils import InferenceServerException


class FakeClock:
    """A controllable monotonic clock (time is the input here, not a component)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def unavailable() -> ServerUnavailableError:
    return ServerUnavailableError("down", status="UNAVAILABLE")


def test_full_jitter_backoff_stays_within_the_exponential_cap():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    assert policy.backoff(0, uniform=lambda lo, hi: hi) == pytest.approx(0.1)
    assert policy.backoff(3, uniform=lambda lo, hi: hi) == pytest.approx(0.8)
    assert policy.backoff(10, uniform=lambda lo, hi: hi) == pytest.approx(1.0)
    samples = [policy.backoff(2) for _ in range(500)]
    assert min(samples) >= 0 and max(samples) <= 0.4
    assert max(samples) - min(samples) > 0.2  # spread out, not a fixed delay


def test_only_transient_statuses_are_retried():
    policy = RetryPolicy()
    assert policy.is_retryable(unavailable())
    assert policy.is_retryable(ResourceExhaustedError("busy", status="RESOURCE_EXHAUSTED"))
    assert policy.is_retryable(ModelNotReadyError("loading", status="NOT_FOUND"))
    for error in (
        InvalidInputError("bad", status="INVALID_ARGUMENT"),
        DeadlineExceededError("late", status="DEADLINE_EXCEEDED"),
        ServerError("boom", status="INTERNAL"),
        AuthenticationError("This protocol is restricted", status="UNAVAILABLE"),
    ):
        assert not policy.is_retryable(error)


def test_failover_moves_on_at_once_then_backs_off():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=6, initial_backoff=1.0, max_backoff=8.0)
    budget = CallBudget(policy, timeout=None, n_endpoints=3, clock=clock)
    delays = []
    for _ in range(5):
        delays.append(budget.retry_delay(unavailable()))
    # endpoints 1 and 2 right away; a backoff once all three were tried; and so on.
    assert delays[0] == 0 and delays[1] == 0 and delays[3] == 0 and delays[4] == 0
    assert 0 <= delays[2] <= 1.0
    with pytest.raises(ServerUnavailableError) as info:
        budget.retry_delay(unavailable())
    assert info.value.attempts == 6


def test_retries_stop_at_the_deadline():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=100, initial_backoff=4.0, max_backoff=4.0)
    budget = CallBudget(policy, timeout=3.0, n_endpoints=1, clock=clock)
    assert budget.remaining() == pytest.approx(3.0)
    clock.now += 2.0
    assert budget.remaining() == pytest.approx(1.0)
    policy_slow = RetryPolicy(max_attempts=100, initial_backoff=10.0, max_backoff=10.0)
    slow = CallBudget(policy_slow, timeout=3.0, clock=clock)
    # A backoff that would cross the deadline ends the call as DEADLINE_EXCEEDED.
    with pytest.raises(DeadlineExceededError) as info:
        for _ in range(99):  # a draw of >= 3 s (70% each) crosses the deadline
            slow.retry_delay(unavailable())
    assert isinstance(info.value.__cause__, ServerUnavailableError)
    clock.now += 5.0
    with pytest.raises(DeadlineExceededError):
        budget.remaining()
    assert CallBudget(RetryPolicy.disabled(), None, n_endpoints=3).max_attempts == 1


def test_unavailable_after_the_deadline_is_reported_as_the_deadline():
    """gRPC may end a call whose deadline ran out while connecting with UNAVAILABLE;
    with retries off, the caller still hears DeadlineExceededError (it once got
    ServerUnavailableError about one time in five for a 1 ms deadline)."""
    clock = FakeClock()
    budget = CallBudget(RetryPolicy.disabled(), timeout=0.001, clock=clock)
    clock.now += 0.002
    with pytest.raises(DeadlineExceededError) as info:
        budget.retry_delay(unavailable())
    assert isinstance(info.value.__cause__, ServerUnavailableError)
    # Before the deadline, an UNAVAILABLE with retries off is what it is.
    early = CallBudget(RetryPolicy.disabled(), timeout=10.0, clock=clock)
    with pytest.raises(ServerUnavailableError):
        early.retry_delay(unavailable())
    # A non-retryable error after the deadline stays itself.
    with pytest.raises(InvalidInputError):
        budget.retry_delay(InvalidInputError("bad", status="INVALID_ARGUMENT"))


@pytest.mark.parametrize(
    ("status", "message", "cls"),
    [
        ("StatusCode.INVALID_ARGUMENT", "HYPOTHESIS: too long (300 words)", InvalidInputError),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceededError),
        ("StatusCode.RESOURCE_EXHAUSTED", "queue full", ResourceExhaustedError),
        (
            "StatusCode.UNAVAILABLE",
            "[request id: <id_unknown>] Exceeds maximum queue size",
            ResourceExhaustedError,
        ),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found", ModelNotFoundError),
        (
            "StatusCode.NOT_FOUND",
            "unknown model: 'x' has no available versions",
            ModelNotReadyError,
        ),
        (
            "StatusCode.UNAVAILABLE",
            "This protocol is restricted, expecting header",
            AuthenticationError,
        ),
        ("StatusCode.INTERNAL", "stub crashed", ServerError),
        (None, "local problem", ServerError),
    ],
)
def test_triton_errors_map_to_types(status, message, cls):
    error = from_triton(InferenceServerException(msg=message, status=status, debug_details="dbg"))
    assert type(error) is cls
    # Capacity and availability problems are retried, credentials and bad input never.
    retryable = cls in (ServerUnavailableError, ModelNotReadyError, ResourceExhaustedError)
    assert RetryPolicy().is_retryable(error) is retryable
    assert error.message == message
    assert error.status == (status.split(".")[1] if status else None)
    assert error.debug_details == "dbg"
    if cls is InvalidInputError:
        assert error.input_name == "HYPOTHESIS"


def test_errors_copy_per_item_and_pickle():
    error = ImageFetchError("IMAGE: fetching http://h/x returned HTTP 404", url="http://h/x")
    clone = error.for_item(7)
    assert clone is not error and clone.item_index == 7 and error.item_index is None
    assert clone.url == "http://h/x" and clone.input_name == "IMAGE"
    assert "item 7" in str(clone)
    back = pickle.loads(pickle.dumps(clone))
    assert type(back) is ImageFetchError and back.item_index == 7 and back.url == clone.url
    assert back.to_dict() == {
        "type": "ImageFetchError",
        "message": error.message,
        "input": "IMAGE",
    }


def test_prediction_checks_the_contract():
    p = Prediction.from_outputs("neutral", "maybe", [0.2, 0.5, 0.3])
    assert p.score == 0.5 and p.probs == {"entailment": 0.2, "neutral": 0.5, "contradiction": 0.3}
    assert p.to_modelscope() == {"labels": "maybe", "scores": 0.5}
    assert hash(p) == hash(Prediction.from_outputs("neutral", "maybe", [0.2, 0.5, 0.3]))
    with pytest.raises(ProtocolError):
        Prediction.from_outputs("unsure", "maybe", [0.2, 0.5, 0.3])
    with pytest.raises(ProtocolError):
        Prediction.from_outputs("neutral", "yes", [0.2, 0.5, 0.3])
    with pytest.raises(ProtocolError):
        Prediction.from_outputs("neutral", "maybe", [0.5, 0.5])


def test_batch_rows_from_jsonl_and_csv():
    jsonl = io.StringIO(
        '{"image": "a.jpg", "hypothesis": "h1"}\n\n'
        '{"image": "b.jpg", "hypothesis": "h2", "premise": "p"}\n'
        "[1, 2]\n"
        '{"image": "c.jpg"}\n'
        '{"image": "d.jpg", "hypothesis": "h", "extra": 1}\n'
    )
    rows = list(read_rows(jsonl, "jsonl"))
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert rows[1].fields == {"image": "b.jpg", "hypothesis": "h2", "premise": "p"}
    assert rows[0].error is None and rows[1].error is None
    assert rows[3].error.input_name == "HYPOTHESIS"
    assert rows[2].error is not None
    assert rows[4].error is None and rows[4].fields["extra"] == 1
    with_header = list(read_rows(io.StringIO("image,hypothesis\na.jpg,h1\n"), "csv"))
    assert with_header[0].fields == {"image": "a.jpg", "hypothesis": "h1"}
    positional = list(read_rows(io.StringIO('a.jpg,"h, with comma",p\nb.jpg,h2,,extra\n'), "csv"))
    assert positional[0].fields == {"image": "a.jpg", "hypothesis": "h, with comma", "premise": "p"}
    assert positional[1].error is not None
    assert detect_format("x.CSV", None) == "csv" and detect_format("-", None) == "jsonl"
    with pytest.raises(ValueError):
        detect_format("rows.txt", None)


def test_batch_rows_keep_extra_columns_and_empty_fields():
    """Datasets with ids and gold labels run as they are and come back whole."""
    csv_text = "id,Image,hypothesis,label,premise\n7,a.jpg,h1,entailment,\n8,b.jpg,,neutral,p\n"
    rows = list(read_rows(io.StringIO(csv_text), "csv"))
    assert rows[0].error is None
    assert rows[0].fields == {
        "id": "7",
        "image": "a.jpg",
        "hypothesis": "h1",
        "label": "entailment",
        "premise": "",
    }
    assert item_of(rows[0], None) == {"image": "a.jpg", "hypothesis": "h1"}  # no empty premise
    assert rows[1].error.input_name == "HYPOTHESIS"
    answered = output_record(rows[0], Prediction.from_outputs("entailment", "yes", [0.7, 0.2, 0.1]))
    assert answered["id"] == "7" and answered["premise"] == ""
    assert answered["input_label"] == "entailment" and answered["label"] == "entailment"
    assert answered["answer"] == "yes"
    failed = output_record(rows[1], rows[1].error)
    assert failed["hypothesis"] == "" and failed["id"] == "8" and failed["input_label"] == "neutral"
    assert failed["error"]["input"] == "HYPOTHESIS"
    jsonl = io.StringIO('{"image": "a.jpg", "hypothesis": "h", "index": 3, "input_index": 4}\n')
    record = output_record(next(read_rows(jsonl, "jsonl")), rows[1].error)
    # `index` is renamed past the row's own `input_index`, which stays as it is.
    assert record["index"] == 0 and record["input_input_index"] == 3 and record["input_index"] == 4
    with pytest.raises(InvalidInputError, match="repeats columns: image"):
        list(read_rows(io.StringIO("image,hypothesis,IMAGE\na,b,c\n"), "csv"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "http://127.0.0.1:8000"},
        {"url": []},
        {"timeout": 0},
        {"concurrency": 0},
        {"batch_size": 0},
        {"compression_algorithm": "brotli"},
        {"root_certificates": b"PEM"},  # TLS options without ssl=True
        {"ssl": True, "private_key": b"KEY"},  # key without certificate chain
    ],
)
def test_bad_configuration_is_refused_up_front(kwargs):
    url = kwargs.pop("url", "127.0.0.1:8001")
    with pytest.raises(ValueError):
        VisualEntailmentClient(url, **kwargs)


def test_server_urls_accept_host_port_and_grpc_resolver_targets() -> None:
    from ofa_ve_client.config import normalize_urls

    assert normalize_urls("grpc://10.0.0.1:8001") == ("10.0.0.1:8001",)
    headless = "dns:///ofa-visual-entailment-headless.ofa-ve.svc.cluster.local:8001"
    assert normalize_urls([headless, "unix:/run/triton.sock"]) == (
        headless,
        "unix:/run/triton.sock",
    )
    with pytest.raises(ValueError, match="HOST:PORT"):
        normalize_urls("http://127.0.0.1:8000")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
            "Failed to connect to remote host: Connection refused",
            "make serve",
        ),
        ("DNS resolution failed for nosuchhost:8001", "make serve"),
        ("Socket closed", "HTTP port"),
        ("Trying to connect an http1.x server (HTTP status 400)", "HTTP port"),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8001: "
            "Ssl handshake failed: SSL_ERROR_SSL: error:0A00010B:SSL routines::wrong version",
            "TLS handshake",
        ),
        ("[request id: 1] Exceeds maximum queue size", None),
    ],
)
def test_connection_errors_carry_a_hint(message, expected):
    error = from_triton(InferenceServerException(msg=message, status="StatusCode.UNAVAILABLE"))
    if expected is None:
        assert getattr(error, "hint", None) is None and "hint" not in error.to_dict()
    else:
        assert expected in error.hint and expected in str(error)
        assert error.to_dict()["hint"] == error.hint
