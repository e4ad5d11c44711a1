"""model.py in-process, for what a real server cannot be made to do on demand.

`triton_python_backend_utils` exists only inside Triton's stub process, so this
module gives model.py a minimal stand-in with the same names (the pattern of
NVIDIA's tensorrtllm_backend tests). Everything else is real: the committed
config.pbtxt, converted to the JSON Triton hands to `initialize`; the engine over
the demo checkpoint. Served behaviour is proven in test_server.py; here: one
request's failure never touches another's, a failed forward pass fails its requests
and not the process, cancellation, forward passes of forward_batch_size, the weights
and device choices.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from tritonclient.grpc import model_config_pb2

MODEL_FOLDER = Path(__file__).resolve().parents[2] / "model_repository" / "ofa_visual_entailment"


# --------------------------------------------------------------------------- the stand-in
class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED = range(6)
    ALREADY_EXISTS, CANCELLED = 6, 7

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: Any = None) -> None:
        self.tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class Metric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None = None) -> None:
        self.labels, self.buckets, self.observed, self.value = labels, buckets, [], 0.0

    def observe(self, value: float) -> None:
        self.observed.append(value)

    def increment(self, value: float) -> None:
        self.value += value

    def set(self, value: float) -> None:
        self.value = value


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> Metric:
        if (self.kind == self.HISTOGRAM) != (buckets is not None):
            raise ValueError("buckets are required for, and only for, histograms")
        return Metric(labels, buckets)


class Logger:
    lines: list[tuple[str, str]] = []  # noqa: RUF012

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(("info", message))

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.lines.append(("warn", message))

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.lines.append(("error", message))


class Request:
    def __init__(
        self, items: list[tuple[bytes, str, str | None]], cancelled: bool | int = False
    ) -> None:
        """``cancelled``: True, or after how many ``is_cancelled`` answers the client goes."""
        column = lambda values: np.array([[v] for v in values], dtype=np.object_)  # noqa: E731
        self.inputs = {
            "IMAGE": column([img for img, _, _ in items]),
            "HYPOTHESIS": column([h.encode() for _, h, _ in items]),
        }
        if any(p is not None for _, _, p in items):
            self.inputs["PREMISE"] = column([(p or "").encode() for _, _, p in items])
        self.cancelled = cancelled

    def is_cancelled(self) -> bool:
        if self.cancelled is True or self.cancelled is False:
            return self.cancelled
        self.cancelled -= 1
        return self.cancelled < 0


def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
    return Tensor(name, request.inputs[name]) if name in request.inputs else None


def _stand_in() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    for obj in (TritonError, Tensor, InferenceResponse, MetricFamily, Logger):
        setattr(module, obj.__name__, obj)
    module.get_input_tensor_by_name = get_input_tensor_by_name
    return module


# --------------------------------------------------------------------------- fixtures
def model_config(**parameters: str) -> dict[str, Any]:
    """The committed config.pbtxt as the JSON Triton passes to initialize()."""
    config = text_format.Parse(
        (MODEL_FOLDER / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return json_format.MessageToDict(
        config, preserving_proto_field_name=True, including_default_value_fields=True
    )


@pytest.fixture(scope="module")
def model_module() -> Iterator[types.ModuleType]:
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = _stand_in()
    spec = importlib.util.spec_from_file_location(
        "ofa_ve_triton_model", MODEL_FOLDER / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    if saved is None:
        sys.modules.pop("triton_python_backend_utils", None)
    else:
        sys.modules["triton_python_backend_utils"] = saved


def initialize(module, model_dir: Path, monkeypatch, **parameters: str):
    monkeypatch.setenv("OFA_VE_MODEL_DIR", str(model_dir))
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(model_config(**parameters)),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
            "model_instance_name": "ofa_visual_entailment_0_0",
            "model_repository": str(MODEL_FOLDER),
            "model_version": "1",
            "model_name": "ofa_visual_entailment",
        }
    )
    return model


@pytest.fixture(scope="module")
def model(model_module, demo_model_dir: Path) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        instance = initialize(model_module, demo_model_dir, monkeypatch, forward_batch_size="2")
        yield instance
        instance.finalize()


GOOD = TEST_IMAGES["tiny_50x40_png"].read_bytes()
OTHER = TEST_IMAGES["bmp_120x80"].read_bytes()


# --------------------------------------------------------------------------- tests
def test_the_committed_config_feeds_initialize(model, demo_model_dir: Path) -> None:
    assert model.engine.forward_batch_size == 2  # the parameter reached the engine
    assert str(model.engine.device) == "cpu"
    assert model.engine.limits.max_text_bytes == 8192
    assert model.metrics["warmup"].value > 0
    assert model.metrics["info"].labels["weights"] == "demo"
    logged = "\n".join(message for _, message in Logger.lines)
    assert f"loaded demo weights from {demo_model_dir.resolve()}" in logged
    assert ("warn", "#  RANDOM DEMO WEIGHTS: " + str(demo_model_dir.resolve())) in Logger.lines
    # OFA_VE_MODEL_DIR (set by `initialize` here) overrides the version folder: said so.
    assert (
        f"weights from $OFA_VE_MODEL_DIR ({demo_model_dir}), overriding the version folder's own"
        in logged
    )


@pytest.mark.slow
def test_bad_request_fails_alone_and_valid_ones_share_the_forward_passes(model) -> None:
    requests = [
        Request([(GOOD, HYPOTHESES[0], None), (OTHER, HYPOTHESES[1], None)]),
        Request([(GOOD, HYPOTHESES[2], None), (b"not an image", HYPOTHESES[3], None)]),
        Request([(OTHER, HYPOTHESES[4], "a premise")]),
        Request([(GOOD, "", None)]),
    ]
    batches_before = list(model.metrics["batch"].observed)
    responses = model.execute(requests)

    assert len(responses) == 4
    assert responses[1].error.code() == TritonError.INVALID_ARG
    assert responses[1].error.message().startswith("IMAGE: ")
    assert "(item 1 of 2)" in responses[1].error.message()
    assert responses[3].error.code() == TritonError.INVALID_ARG
    assert responses[3].error.message().startswith("HYPOTHESIS: ")
    # The three valid items ran together, in forward passes of forward_batch_size (2).
    assert model.metrics["batch"].observed[len(batches_before) :] == [2, 1]
    engine = model.engine
    for response, items in (
        (responses[0], [(GOOD, HYPOTHESES[0], None), (OTHER, HYPOTHESES[1], None)]),
        (responses[2], [(OTHER, HYPOTHESES[4], "a premise")]),
    ):
        assert response.error is None
        want = engine.predict([engine.prepare(*item) for item in items])
        np.testing.assert_allclose(response.tensors["PROBS"], want, atol=1e-5)
        labels = [v.decode() for v in response.tensors["LABEL"].reshape(-1)]
        assert labels == [("entailment", "neutral", "contradiction")[i] for i in want.argmax(1)]
        assert (
            response.tensors["LABEL"].shape == response.tensors["ANSWER"].shape == (len(items), 1)
        )
    assert model.invalid["IMAGE"].value >= 1 and model.invalid["HYPOTHESIS"].value >= 1


def test_a_failed_forward_pass_fails_its_requests_not_the_process(model, monkeypatch) -> None:
    def broken(items, **_: object):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(model.engine, "predict", broken)
    responses = model.execute(
        [Request([(GOOD, HYPOTHESES[0], None)]), Request([(b"junk", HYPOTHESES[1], None)])]
    )
    assert responses[0].error.code() == TritonError.INTERNAL
    assert "CUDA out of memory (injected)" in responses[0].error.message()
    assert responses[1].error.code() == TritonError.INVALID_ARG
    assert any(level == "error" and "forward pass" in msg for level, msg in Logger.lines)


def test_an_unexpected_preprocessing_failure_fails_only_its_request(model, monkeypatch) -> None:
    real_prepare = model.engine.prepare

    def prepare(image, hypothesis, premise=None, **options):
        if image == OTHER:
            raise MemoryError("decoder blew up (injected)")
        return real_prepare(image, hypothesis, premise, **options)

    monkeypatch.setattr(model.engine, "prepare", prepare)
    responses = model.execute(
        [Request([(OTHER, HYPOTHESES[0], None)]), Request([(GOOD, HYPOTHESES[1], None)])]
    )
    assert responses[0].error.code() == TritonError.INTERNAL
    assert "decoder blew up" in responses[0].error.message()
    assert responses[1].error is None and responses[1].tensors["PROBS"].shape == (1, 3)


def test_a_cancelled_request_is_not_run(model) -> None:
    responses = model.execute(
        [
            Request([(GOOD, HYPOTHESES[0], None)], cancelled=True),
            Request([(GOOD, HYPOTHESES[0], None)]),
        ]
    )
    assert responses[0].error.code() == TritonError.CANCELLED
    assert responses[1].error is None


def test_a_request_cancelled_during_the_execution_is_answered_cancelled(model) -> None:
    """Its client goes after the first check (at the start of execute): its items are
    not decoded, and its response says CANCELLED; the other request is answered."""
    gone = Request([(GOOD, HYPOTHESES[0], None)] * 3, cancelled=1)
    responses = model.execute([gone, Request([(GOOD, HYPOTHESES[1], None)])])
    assert responses[0].error.code() == TritonError.CANCELLED
    assert responses[1].error is None and responses[1].tensors["PROBS"].shape == (1, 3)


def test_model_dir_resolution(model_module, monkeypatch, tmp_path: Path) -> None:
    """The version folder's weights/, unless the model_dir parameter or OFA_VE_MODEL_DIR
    (which wins over both) says otherwise; each failure names where the path came from."""
    from ofa_ve_engine.parameters import locate_weights

    def model_dir(at: Path) -> Path:
        at.mkdir(parents=True)
        (at / "configuration.json").write_text("{}")
        return at

    default = model_module.from_triton_config(model_config())
    monkeypatch.delenv("OFA_VE_MODEL_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"1/weights \(from the version folder\)"):
        locate_weights(default, tmp_path, "1")
    (tmp_path / "1" / "weights").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no configuration\.json"):
        locate_weights(default, tmp_path, "1")
    (tmp_path / "1" / "weights" / "configuration.json").write_text("{}")
    assert locate_weights(default, tmp_path, 1) == (
        tmp_path / "1" / "weights",
        "the version folder",
    )
    model_dir(tmp_path / "2" / "weights")
    assert locate_weights(default, tmp_path, "2")[0] == tmp_path / "2" / "weights"

    params = model_module.from_triton_config(model_config(model_dir="elsewhere"))
    with pytest.raises(FileNotFoundError, match="from parameter model_dir"):
        locate_weights(params, tmp_path, "1")
    model_dir(tmp_path / "elsewhere")
    assert locate_weights(params, tmp_path, "1") == (tmp_path / "elsewhere", "parameter model_dir")
    override = model_dir(tmp_path / "override")
    monkeypatch.setenv("OFA_VE_MODEL_DIR", str(override))
    assert locate_weights(params, tmp_path, "1") == (override, "$OFA_VE_MODEL_DIR")  # env wins
    monkeypatch.setenv("OFA_VE_MODEL_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere \(from \$OFA_VE_MODEL_DIR\)"):
        locate_weights(default, tmp_path, "1")
    monkeypatch.delenv("OFA_VE_MODEL_DIR")
    with pytest.raises(ValueError, match="version folder"):  # no version, nothing set
        locate_weights(default, tmp_path)


def test_instance_device(model_module, monkeypatch) -> None:
    assert model_module.instance_device({"model_instance_kind": "CPU"}) == "cpu"
    monkeypatch.setattr(model_module.torch.cuda, "is_available", lambda: True)
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "1"}
    assert model_module.instance_device(gpu) == "cuda:1"
    monkeypatch.setattr(model_module.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="KIND_CPU"):
        model_module.instance_device(gpu)


def test_bad_parameters_are_named(model_module, demo_model_dir: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="'max_image_bytes'"):
        initialize(model_module, demo_model_dir, monkeypatch, max_image_bytes="lots")
    with pytest.raises(ValueError, match="'dtype'"):
        initialize(model_module, demo_model_dir, monkeypatch, dtype="float8")
    with pytest.raises(ValueError, match="'image_chunk_size' must be an integer"):
        initialize(model_module, demo_model_dir, monkeypatch, image_chunk_size="two")
    with pytest.raises(ValueError, match="'engine_batch_size' is not a parameter"):
        initialize(model_module, demo_model_dir, monkeypatch, engine_batch_size="1")


def test_config_is_the_public_interface() -> None:
    """docs/interface.md's tensors, a bounded queue, KIND_AUTO, every parameter explained."""
    config = model_config()
    assert config["name"] == "ofa_visual_entailment" and config["backend"] == "python"
    assert config["max_batch_size"] >= 32
    tensors = {
        (t["name"], t["data_type"], tuple(int(d) for d in t["dims"]), t.get("optional", False))
        for t in config["input"] + config["output"]
    }
    assert tensors == {
        ("IMAGE", "TYPE_STRING", (1,), False),
        ("HYPOTHESIS", "TYPE_STRING", (1,), False),
        ("PREMISE", "TYPE_STRING", (1,), True),
        ("LABEL", "TYPE_STRING", (1,), False),
        ("ANSWER", "TYPE_STRING", (1,), False),
        ("PROBS", "TYPE_FP32", (3,), False),
    }
    batching = config["dynamic_batching"]
    assert int(batching["max_queue_delay_microseconds"]) > 0
    assert batching["preferred_batch_size"]
    policy = batching["default_queue_policy"]
    assert policy["timeout_action"] == "REJECT"
    assert int(policy["default_timeout_microseconds"]) > 0 and policy["max_queue_size"] > 0
    assert [g["kind"] for g in config["instance_group"]] == ["KIND_AUTO"]

    lines = (MODEL_FOLDER / "config.pbtxt").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("parameters {"):
            assert lines[number - 1].startswith("#"), f"undocumented: {line}"
