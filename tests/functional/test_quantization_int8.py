"""A real tritonserver with `quantization int8`: it calibrates at load, says so in its
start-up log line, and answers close to the float32 engine.

Over the tiny checkpoint (its stem is a small ResNet: calibration takes a second or
two). The accuracy of int8 on OFA-tiny is measured, not asserted here
(docs/benchmarks.md, int8). Skipped where the CPU has no int8 dot-product
instructions: there the model refuses to load (tests/unit/engine/test_quantization_unit.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ofa_ve_client import LABELS, VisualEntailmentClient
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.cpu_features import INT8_FLAGS, cpu_flags
from ofa_ve_ops.model_config import ConfigEdits, make_model_repository
from ofa_ve_ops.server_process import TritonServer
from support.servers import running

pytestmark = pytest.mark.skipif(
    not cpu_flags().intersection(INT8_FLAGS),
    reason=f"this CPU has none of {INT8_FLAGS}: the model refuses quantization int8 here",
)

HYPOTHESIS = "A woman in an orange suit is smiling."


@pytest.fixture(scope="module")
def int8_server(server_factory, tmp_path_factory, tiny_model_dir: Path) -> Iterator[TritonServer]:
    repository = make_model_repository(
        tmp_path_factory.mktemp("int8") / "repo",
        ConfigEdits(parameters={"quantization": "int8", "warmup_batch_sizes": "1,2"}),
    )
    with running(server_factory(model_repository=repository, model_dir=tiny_model_dir)) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_it_serves_int8_and_says_so(
    int8_server: TritonServer, tiny_engine: VisualEntailmentEngine
) -> None:
    log = int8_server.log_text()
    assert "stem int8, quantization int8 ResNet stem, calibrated at load on" in log
    assert log.index("loaded demo weights") < log.index("warm-up finished")

    images = [TEST_IMAGES["landscape_640x480_jpeg"], TEST_IMAGES["tiny_50x40_png"]]
    with VisualEntailmentClient(int8_server.grpc_url, timeout=60) as client:
        served = [client.predict(path.read_bytes(), HYPOTHESIS) for path in images]
    assert all(p.label in LABELS for p in served)
    got = np.array([[p.probs[label] for label in LABELS] for p in served])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    want = tiny_engine.predict(
        [tiny_engine.prepare(path.read_bytes(), HYPOTHESIS) for path in images]
    )
    np.testing.assert_allclose(got, want, atol=0.05)  # float32 engine, same checkpoint
