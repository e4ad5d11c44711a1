"""The one table of model parameters: parsing, errors that name the parameter, and
config.pbtxt, docs/configuration.md and the table kept in step."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from ofa_ve_engine.limits import InputLimits
from ofa_ve_engine.parameters import (
    BY_NAME,
    PARAMETERS,
    ModelParameters,
    ParameterError,
    markdown_table,
    parse_assignments,
    read_parameters,
)
from ofa_ve_ops.paths import CONFIG_PBTXT, REPO_ROOT
from tritonclient.grpc import model_config_pb2


def committed_parameters() -> dict[str, str]:
    config = text_format.Parse(CONFIG_PBTXT.read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def test_defaults_are_the_dataclass_defaults() -> None:
    assert read_parameters({}) == ModelParameters()


def test_the_committed_config_lists_every_parameter_at_its_default() -> None:
    committed = committed_parameters()
    assert sorted(committed) == sorted(p.name for p in PARAMETERS)
    for name, value in committed.items():
        assert value == BY_NAME[name].default, f"config.pbtxt {name}={value!r}"
    assert read_parameters(committed) == ModelParameters()


def test_the_docs_table_is_generated_from_the_table() -> None:
    docs = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert markdown_table() in docs


def test_typed_values_and_auto() -> None:
    params = read_parameters({
        "forward_batch_size": "4", "image_chunk_size": "auto", "compile": "TRUE",
        "warmup_batch_sizes": "1, 8,32", "dtype": "bfloat16", "torch_threads": "",
        "max_text_bytes": "100",
    })
    assert params.forward_batch_size == 4 and params.image_chunk_size is None
    assert params.compile is True and params.warmup_batch_sizes == (1, 8, 32)
    assert params.torch_threads is None
    assert params.limits == InputLimits(max_text_bytes=100)
    options = params.engine_options()
    assert options["forward_batch_size"] == 4 and str(options["dtype"]) == "torch.bfloat16"
    assert options["quantization"] == "none"
    assert read_parameters({"quantization": "int8"}).engine_options()["quantization"] == "int8"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("forward_batch_size", "0", "'forward_batch_size' must be >= 1, got 0"),
        ("image_chunk_size", "two", "'image_chunk_size' must be an integer, got 'two'"),
        ("compile", "1", "'compile' must be true or false, got '1'"),
        ("dtype", "float8", "'dtype' must be one of"),
        ("warmup_batch_sizes", "1,x", "'warmup_batch_sizes' must be an integer, got 'x'"),
        ("max_image_bytes", "-5", "'max_image_bytes' must be >= 1"),
        ("image_path", "turbo", "'image_path' must be one of"),
        ("quantization", "int4", "'quantization' must be one of"),
        ("engine_batch_size", "1", "'engine_batch_size' is not a parameter of this model"),
    ],
)
def test_errors_name_the_parameter(name: str, value: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(")) as caught:
        read_parameters({name: value})
    assert caught.value.name == name


def test_benchmark_assignments_get_the_same_checks() -> None:
    assert parse_assignments(["dtype=float16", "forward_batch_size = 8"]) == {
        "dtype": "float16", "forward_batch_size": "8",
    }
    with pytest.raises(ParameterError, match="'compile' must be true or false"):
        parse_assignments(["compile=1"])  # the server refuses it, so the benchmark does
    with pytest.raises(ParameterError, match="name=value"):
        parse_assignments(["dtype"])


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", "cpu", False), ("auto", "cuda", True), ("true", "cpu", True), ("false", "cuda", False),
])
def test_pipelining_rule(setting: str, device: str, expected: bool) -> None:
    assert read_parameters({"pipeline": setting}).pipelined(device) is expected
