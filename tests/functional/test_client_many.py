"""predict_many and classify (sync, async, CLI) against a real tritonserver, and their pure logic.

predict_many sends one image with many hypotheses; it must answer exactly as
sending each (image, hypothesis) alone would, in order, split into requests
of at most max_batch_size. classify ranks candidate labels by entailment;
its scoring and validation are checked without a server first.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Iterator

import pytest
from ofa_ve_client import (
    ANSWERS,
    LABELS,
    AsyncVisualEntailmentClient,
    Classification,
    InvalidInputError,
    Prediction,
    VisualEntailmentClient,
)
from ofa_ve_client.classification import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    ZeroShotQuery,
    check_hypotheses,
    check_labels,
    check_template,
    rank,
    softmax_log_entailment,
)
from ofa_ve_data.workload import AGREEMENT_HYPOTHESES, HYPOTHESES, TEST_IMAGES

JPEG = TEST_IMAGES["landscape_640x480_jpeg"]
PNG = TEST_IMAGES["tiny_50x40_png"]
CANDIDATES = ("astronaut", "cat", "rocket", "cup of coffee", "horse")
PREMISE = "A person stands in front of a flag."


def fake(entailment: float, neutral: float | None = None) -> Prediction:
    """A Prediction with the given P(entailment); the rest split between the other two."""
    neutral = (1 - entailment) / 2 if neutral is None else neutral
    probs = [entailment, neutral, 1 - entailment - neutral]
    best = max(range(3), key=probs.__getitem__)
    return Prediction.from_outputs(LABELS[best], ANSWERS[best], probs)


def same(a: Prediction, b: Prediction) -> bool:
    return a.label == b.label and all(abs(a.probs[k] - b.probs[k]) < 1e-5 for k in LABELS)


# -- pure logic: no server -----------------------------------------------------


def test_softmax_of_log_entailment_normalises_the_probabilities():
    probs = [0.5, 0.2, 0.05, 0.25]
    scores = softmax_log_entailment(probs)
    assert math.fsum(scores) == pytest.approx(1.0, abs=1e-12)
    assert scores == pytest.approx([p / sum(probs) for p in probs], abs=1e-12)
    # Tiny probabilities (float32 underflow territory) stay finite and ordered.
    assert softmax_log_entailment([1e-40, 1e-42]) == pytest.approx([100 / 101, 1 / 101])
    assert softmax_log_entailment([0.0, 0.3]) == [0.0, 1.0]
    assert softmax_log_entailment([0.0, 0.0]) == [0.5, 0.5]
    assert softmax_log_entailment([]) == []


def test_rank_is_best_first_and_stable_on_ties():
    assert rank([0.1, 0.7, 0.2]) == [1, 2, 0]
    assert rank([0.3, 0.3, 0.4, 0.3]) == [2, 0, 1, 3]


def test_query_expands_labels_through_the_template():
    query = ZeroShotQuery.build(["cat", "dog"], "A {0} here, {0} indeed.", premise="Pets.")
    assert query.hypotheses == ("A cat here, cat indeed.", "A dog here, dog indeed.")
    assert ZeroShotQuery.build(["x"]).hypotheses == (DEFAULT_HYPOTHESIS_TEMPLATE.format("x"),)
    assert check_template("{{literal}} {}") == "{{literal}} {}"


def test_single_label_result_sums_to_one_and_ranks_by_entailment():
    query = ZeroShotQuery.build(["a", "b", "c"], "{}")
    result = query.result([fake(0.2), fake(0.6), fake(0.1)])
    assert isinstance(result, Classification)
    assert result.labels == ("b", "a", "c")
    assert math.fsum(result.scores) == pytest.approx(1.0, abs=1e-12)
    assert result.scores == pytest.approx((0.6 / 0.9, 0.2 / 0.9, 0.1 / 0.9))
    assert result.hypotheses == ("b", "a", "c")
    assert [p.probs["entailment"] for p in result.predictions] == pytest.approx([0.6, 0.2, 0.1])
    assert (result.label, result.score) == ("b", result.scores[0])
    assert result.to_dict() == {
        "labels": ["b", "a", "c"],
        "scores": list(result.scores),
        "hypotheses": ["b", "a", "c"],
        "multi_label": False,
        "premise": None,
    }
    json.dumps(result.to_dict())


def test_multi_label_scores_are_each_labels_own_entailment():
    query = ZeroShotQuery.build(("a", "b", "c"), "{}", multi_label=True, premise="P.")
    result = query.result([fake(0.7, 0.1), fake(0.9, 0.05), fake(0.05)])
    assert result.labels == ("b", "a", "c")
    assert result.scores == pytest.approx((0.9, 0.7, 0.05))
    assert result.scores_by_label() == pytest.approx({"b": 0.9, "a": 0.7, "c": 0.05})
    assert result.to_dict()["multi_label"] is True and result.premise == "P."
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        query.result([fake(0.5), fake(0.5)])


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([], "at least one label"),
        ((), "at least one label"),
        ("", "at least one label"),
        (["cat", "dog", "cat"], r"candidate_labels\[2\]: duplicate label 'cat'"),
        (["cat", 3], r"candidate_labels\[1\]: must be a str, not int"),
        (["cat", None], r"candidate_labels\[1\]: must be a str, not NoneType"),
        (["cat", "  "], r"candidate_labels\[1\]: is empty"),
        (b"cat", "must be a list of strings"),
        (42, "must be a list of strings, not int"),
    ],
)
def test_bad_candidate_labels_are_refused(labels, match):
    with pytest.raises(InvalidInputError, match=match):
        check_labels(labels)


def test_a_single_string_is_comma_separated_labels_as_in_hf():
    assert check_labels("cat, dog ,bird") == ("cat", "dog", "bird")
    assert check_labels(iter(["a", "b"])) == ("a", "b")


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("This is a photo.", "needs a {} placeholder"),
        ("This is a {label}.", "needs a {} placeholder"),
        ("A {} and a {1}.", "needs a {} placeholder"),
        ("{{}} literal only", "needs a {} placeholder"),
        ("Broken {", "malformed"),
        ("A {} and a {0}.", "malformed"),
        (None, "must be a str, not NoneType"),
    ],
)
def test_bad_templates_are_refused(template, match):
    with pytest.raises(InvalidInputError, match=match):
        check_template(template)


def test_classify_and_predict_many_check_arguments_before_any_request():
    """Port 1 has no server: these must fail on the arguments, not on the connection."""
    with VisualEntailmentClient("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(InvalidInputError, match="at least one label"):
            client.classify(PNG, [])
        with pytest.raises(InvalidInputError, match="duplicate"):
            client.classify(PNG, ["a", "a"])
        with pytest.raises(InvalidInputError, match="placeholder"):
            client.classify(PNG, ["a"], "no placeholder")
        with pytest.raises(InvalidInputError, match="PREMISE: must be a str"):
            client.classify(PNG, ["a"], premise=3)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="not a single str"):
            client.predict_many(PNG, "a sentence")  # type: ignore[arg-type]
        assert client.predict_many(PNG, []) == []
    with pytest.raises(InvalidInputError, match="not a single str"):
        check_hypotheses("text")


# -- against the server --------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_server) -> Iterator[VisualEntailmentClient]:
    with VisualEntailmentClient(tiny_server.grpc_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    return JPEG.read_bytes()


def alone(client: VisualEntailmentClient, image: bytes, hypotheses, premise=None):
    return [client.predict(image, h, premise) for h in hypotheses]


def test_predict_many_equals_each_pair_alone(client, image_bytes, tiny_engine):
    hypotheses = list(HYPOTHESES[:4])
    for premise in (None, PREMISE):
        many = client.predict_many(JPEG, hypotheses, premise)  # a path: read once
        singles = alone(client, image_bytes, hypotheses, premise)
        assert len(many) == len(hypotheses)
        for got, want in zip(many, singles, strict=True):
            assert same(got, want), (got, want)
    # And the engine in-process agrees on one of them (PROBS order, label mapping).
    probs = tiny_engine.predict([tiny_engine.prepare(image_bytes, hypotheses[1], premise=None)])[0]
    got = client.predict_many(image_bytes, [hypotheses[1]])[0]
    assert [got.probs[k] for k in LABELS] == pytest.approx(probs.tolist(), abs=1e-5)


def test_predict_many_splits_into_max_batch_size_requests_in_order(client, image_bytes):
    size = client.max_batch_size()
    n = size + 8
    # Seven distinct hypotheses in turn: 7 is prime to the request size, so a misplaced
    # request or a shifted slot lands on a different hypothesis (and 7 singles, not n).
    distinct = [*HYPOTHESES[:4], *AGREEMENT_HYPOTHESES[:3]]
    hypotheses = [distinct[i % 7] for i in range(n)]
    sent: list[int] = []
    infer = client._infer

    def counting(items, timeout):
        sent.append(len(items))
        return infer(items, timeout)

    client._infer = counting  # instance attribute: predict_batch's workers call it
    try:
        many = client.predict_many(image_bytes, hypotheses)
    finally:
        del client._infer
    assert sorted(sent, reverse=True) == [size, n - size]
    singles = alone(client, image_bytes, distinct)
    assert len(set(distinct)) == 7 and all(
        not same(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]
    ), "the check needs seven distinguishable answers"
    mismatched = [i for i, got in enumerate(many) if not same(got, singles[i % 7])]
    assert mismatched == []


def test_predict_many_reports_errors_per_item(client, image_bytes):
    too_long = "word " * 2000  # over max_text_bytes: refused by the server, not the client
    hypotheses = ["A person is smiling.", "", "There is a flag.", too_long, "It is night."]
    results = client.predict_many(image_bytes, hypotheses, return_exceptions=True)
    singles = alone(client, image_bytes, [hypotheses[i] for i in (0, 2, 4)])
    for i, want in zip((0, 2, 4), singles, strict=True):
        assert isinstance(results[i], Prediction) and same(results[i], want)
    for i in (1, 3):
        error = results[i]
        assert isinstance(error, InvalidInputError), error
        assert error.item_index == i and error.input_name == "HYPOTHESIS"
    assert results[3].status == "INVALID_ARGUMENT"  # the server's own rejection
    with pytest.raises(InvalidInputError) as info:
        client.predict_many(image_bytes, hypotheses)
    assert info.value.item_index == 1


def test_predict_many_raises_once_for_an_unreadable_image(client, tmp_path):
    with pytest.raises(InvalidInputError, match="IMAGE: no such file"):
        client.predict_many(tmp_path / "missing.jpg", ["A cat."], return_exceptions=True)


def test_classify_single_label(client, image_bytes):
    result = client.classify(image_bytes, CANDIDATES)
    hypotheses = [DEFAULT_HYPOTHESIS_TEMPLATE.format(label) for label in CANDIDATES]
    entailment = {
        label: p.probs["entailment"]
        for label, p in zip(CANDIDATES, alone(client, image_bytes, hypotheses), strict=True)
    }
    assert sorted(result.labels) == sorted(CANDIDATES)
    assert math.fsum(result.scores) == pytest.approx(1.0, abs=1e-9)
    assert list(result.scores) == sorted(result.scores, reverse=True)
    assert list(result.labels) == sorted(CANDIDATES, key=lambda lb: -entailment[lb])
    total = sum(entailment.values())
    for label, score, hypothesis, prediction in zip(
        result.labels, result.scores, result.hypotheses, result.predictions, strict=True
    ):
        assert hypothesis == DEFAULT_HYPOTHESIS_TEMPLATE.format(label)
        assert prediction.probs["entailment"] == pytest.approx(entailment[label], abs=1e-5)
        assert score == pytest.approx(entailment[label] / total, abs=1e-4)


def test_classify_multi_label_with_premise_and_template(client, image_bytes):
    template = "The picture shows {}."
    result = client.classify(
        image_bytes, list(CANDIDATES), template, multi_label=True, premise=PREMISE
    )
    assert result.multi_label and result.premise == PREMISE
    for label, score, prediction in zip(
        result.labels, result.scores, result.predictions, strict=True
    ):
        assert score == prediction.probs["entailment"]
        want = client.predict(image_bytes, template.format(label), PREMISE)
        assert same(prediction, want)
    assert list(result.scores) == sorted(result.scores, reverse=True)


def test_async_predict_many_and_classify_match_sync(client, tiny_server, image_bytes):
    hypotheses = [*HYPOTHESES[:3], "", HYPOTHESES[3]]

    async def main():
        async with AsyncVisualEntailmentClient(tiny_server.grpc_url, timeout=120) as aclient:
            many = await aclient.predict_many(JPEG, hypotheses, PREMISE, return_exceptions=True)
            single = await aclient.classify(image_bytes, CANDIDATES)
            multi = await aclient.classify(JPEG, CANDIDATES, multi_label=True)
            with pytest.raises(InvalidInputError, match="duplicate"):
                await aclient.classify(JPEG, ["a", "a"])
            return many, single, multi

    many, single, multi = asyncio.run(main())
    sync_many = client.predict_many(image_bytes, hypotheses, PREMISE, return_exceptions=True)
    for got, want in zip(many, sync_many, strict=True):
        if isinstance(want, Prediction):
            assert same(got, want)
        else:
            assert isinstance(got, InvalidInputError) and got.item_index == want.item_index == 3
    for got, want in (
        (single, client.classify(image_bytes, CANDIDATES)),
        (multi, client.classify(image_bytes, CANDIDATES, multi_label=True)),
    ):
        assert got.labels == want.labels
        assert got.scores == pytest.approx(want.scores, abs=1e-5)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ofa_ve_client", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_classify_and_many(client, tiny_server, image_bytes):
    url = tiny_server.grpc_url
    out = cli("classify", str(JPEG), *CANDIDATES, "--json", "--premise", PREMISE, "--url", url)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    want = client.classify(JPEG, CANDIDATES, premise=PREMISE)
    assert printed["image"] == str(JPEG) and printed["premise"] == PREMISE
    assert printed["labels"] == list(want.labels) and printed["multi_label"] is False
    assert printed["scores"] == pytest.approx(list(want.scores), abs=1e-5)

    out = cli(
        "classify",
        str(JPEG),
        "cat",
        "rocket",
        "--multi-label",
        "--template",
        "It shows a {}.",
        "--url",
        url,
    )
    assert out.returncode == 0, out.stderr
    want = client.classify(JPEG, ["cat", "rocket"], "It shows a {}.", multi_label=True)
    lines = [line.split(None, 1) for line in out.stdout.splitlines()]
    assert [label for _, label in lines] == list(want.labels)
    assert [float(s) for s, _ in lines] == pytest.approx(list(want.scores), abs=1e-4)

    bad = cli("classify", str(JPEG), "cat", "cat", "--url", url)
    assert bad.returncode == 2 and "duplicate label 'cat'" in bad.stderr

    hypotheses = [HYPOTHESES[0], "", HYPOTHESES[1]]
    out = cli("many", str(JPEG), *hypotheses, "--url", url)
    assert out.returncode == 1  # one hypothesis failed
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["hypothesis"] for r in records] == hypotheses
    assert records[1]["error"]["input"] == "HYPOTHESIS"
    for record, want_p in zip(
        (records[0], records[2]),
        client.predict_many(image_bytes, [HYPOTHESES[0], HYPOTHESES[1]]),
        strict=True,
    ):
        assert record["label"] == want_p.label
        assert record["probs"] == pytest.approx(dict(want_p.probs), abs=1e-5)

    out = cli("many", str(JPEG), HYPOTHESES[2], "--premise", PREMISE, "--url", url)
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert record["probs"] == pytest.approx(
        dict(client.predict_many(image_bytes, [HYPOTHESES[2]], PREMISE)[0].probs), abs=1e-5
    )


def test_cli_help_is_true():
    top = cli("--help")
    assert top.returncode == 0 and "classify" in top.stdout and "many" in top.stdout
    for command in ("classify", "many"):
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "--url" in sub.stdout and "--premise" in sub.stdout
    text = " ".join(cli("classify", "--help").stdout.split())
    for flag in ("--template", "--multi-label", "--json", DEFAULT_HYPOTHESIS_TEMPLATE):
        assert flag in text
