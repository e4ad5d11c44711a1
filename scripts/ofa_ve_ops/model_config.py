"""A copy of the model repository whose config.pbtxt carries a tool's edits, through protobuf.

Why protobuf and not regexes: config.pbtxt is a `ModelConfig` message in text format.
Parsed with Triton's own schema (tritonclient's `model_config_pb2`) and written back, an
edit can only produce a config Triton can parse, a missing field is added rather than
silently missed, and a typo in a field name fails here, not at the server's load. The
copy loses the committed file's comments; its values are the committed ones but for the
edits.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa_ve_ops.paths import CONFIG_PBTXT, MODEL_NAME, MODEL_REPOSITORY


def parse(text: str) -> Any:
    """A `ModelConfig` message from config.pbtxt text (ParseError names line and column)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def to_text(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def load(path: Path = CONFIG_PBTXT) -> Any:
    return parse(Path(path).read_text())


@dataclass(frozen=True)
class ConfigEdits:
    """What a tool changes in config.pbtxt; None / empty leaves a value as committed."""

    max_batch_size: int | None = None
    instances: int | None = None
    """`count` of every instance group."""
    kind: str | None = None
    """KIND_AUTO, KIND_CPU or KIND_GPU for every instance group."""
    queue_delay_us: int | None = None
    preferred_batch_sizes: Sequence[int] | None = None
    max_queue_size: int | None = None
    """`dynamic_batching.default_queue_policy.max_queue_size`."""
    parameters: Mapping[str, str] = field(default_factory=dict)
    """config.pbtxt `parameters` (string values), set or added."""


def apply(config: Any, edits: ConfigEdits) -> Any:
    """Apply `edits` to the `ModelConfig` message in place and return it (an unknown
    instance kind is a ValueError naming it)."""
    batching = config.dynamic_batching
    if edits.max_batch_size is not None:
        config.max_batch_size = edits.max_batch_size
    if (edits.instances, edits.kind) != (None, None) and not config.instance_group:
        config.instance_group.add()
    for group in config.instance_group:
        if edits.instances is not None:
            group.count = edits.instances
        if edits.kind is not None:
            group.kind = group.Kind.Value(edits.kind)
    if edits.queue_delay_us is not None:
        batching.max_queue_delay_microseconds = edits.queue_delay_us
    if edits.preferred_batch_sizes is not None:
        del batching.preferred_batch_size[:]
        batching.preferred_batch_size.extend(edits.preferred_batch_sizes)
    if edits.max_queue_size is not None:
        batching.default_queue_policy.max_queue_size = edits.max_queue_size
    for key, value in edits.parameters.items():
        config.parameters[key].string_value = value
    return config


def make_model_repository(dest: Path, edits: ConfigEdits, source: Path = MODEL_REPOSITORY) -> Path:
    """A copy of `source` (the model repository) whose config.pbtxt carries `edits`."""
    shutil.copytree(  # a weights/ link (make serve's) stays a link: no copy of the weights
        source, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    path = dest / MODEL_NAME / "config.pbtxt"
    config = apply(load(path), edits)
    path.write_text(
        "# Written by ofa_ve_ops.model_config from the committed config.pbtxt plus edits.\n"
        + to_text(config)
    )
    return dest
