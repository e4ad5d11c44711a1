"""The ONNX export of the whole network (`ofa_ve_ops.export_onnx`) on the tiny checkpoint.

Why: the exported graph is what ONNX Runtime, OpenVINO and (on a GPU) TensorRT run,
and what `ofa_ve_bench.peers` measures the engine against, so it must give the
engine's probabilities for every batch size and text length, not only for the
example it was traced with (2 items). The engine compared with is the tiny engine
as it serves (its oneDNN stem where the CPU has one), not the export's aten copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from support.engine_tiny import TEXTS, png

pytest.importorskip("onnxruntime")

from ofa_ve_ops import export_onnx

pytestmark = pytest.mark.timeout(120)

COLORS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40))


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx.export(export_onnx.load_engine(tiny_model_dir), out)
    return out


def _items(engine: object, count: int) -> list:
    return [
        engine.prepare(png(COLORS[i % len(COLORS)], (40 + 9 * i, 30 + 5 * i)), *TEXTS[i])
        for i in range(count)
    ]


def test_runs_in_onnx_runtime_like_the_engine_for_other_batch_sizes_and_lengths(
    exported: Path, tiny_engine: object
) -> None:
    session = export_onnx.ort_session(exported, threads=1)
    example_width = export_onnx.network_inputs(
        export_onnx.example_items(tiny_engine), tiny_engine.tokenizer.pad_id
    )["input_ids"].shape[1]
    for count in (4, 1):  # padded, other than the example's 2; and a batch without padding
        items = _items(tiny_engine, count)
        inputs = export_onnx.network_inputs(items, tiny_engine.tokenizer.pad_id)
        assert inputs["input_ids"].shape[1] != example_width
        (got,) = session.run(None, inputs)
        want = tiny_engine.predict(items)
        assert got.shape == (count, 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_refuses_when_the_graph_differs_and_writes_nothing(
    tiny_model_dir: Path, tiny_engine: object, tmp_path: Path
) -> None:
    out = tmp_path / "refused.onnx"
    with pytest.raises(export_onnx.ExportError, match="not written"):
        export_onnx.export_checked(
            tiny_model_dir, out, tolerance=-1.0, items=_items(tiny_engine, 2)
        )
    assert list(tmp_path.iterdir()) == []


def test_needs_the_aten_modules(tiny_model_dir: Path) -> None:
    from ofa_ve_engine import VisualEntailmentEngine

    engine = VisualEntailmentEngine.from_model_dir(
        tiny_model_dir, device="cpu", linear_backend="aten", stem_backend="aten"
    )
    engine.model.encoder.stem_runner = lambda images: images  # stands in for oneDNN's stem
    with pytest.raises(export_onnx.ExportError, match="stem_backend='aten'"):
        export_onnx.OnePassNetwork(engine)


@pytest.mark.slow
def test_the_peers_tool_runs_the_exported_graph(
    exported: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`ofa_ve_bench.peers` end to end on the tiny checkpoint (its float32 peers within
    1e-4 of ours, our int8, ONNX Runtime's and OpenVINO's quantised and run; timings
    meaningless here)."""
    import json

    from ofa_ve_bench import peers

    out = tmp_path / "peers.json"
    argv = ["--model-dir", str(tiny_model_dir), "--onnx", str(exported), "--items", "2"]
    argv += ["--seconds", "0.05", "--rounds", "1", "--out", str(out)]
    argv += ["--precisions", "float32,int8"]
    assert peers.main(argv) == 0
    rows = {(r["runtime"], r["precision"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("onnxruntime", "float32")]["within_tolerance"] is True
    assert rows[("openvino", "float32")]["within_tolerance"] is True
    ours_int8 = rows[("ours", "int8")]  # quantization int8, on any CPU (measured, noted)
    assert ours_int8["ms_per_item"] is not None and ours_int8["label_agreement"] is not None
    assert "quantization int8" in ours_int8["note"]
    ort_int8 = rows[("onnxruntime", "int8")]  # its static QDQ quantisation, then run
    assert ort_int8["ms_per_item"] is not None and ort_int8["label_agreement"] is not None
    assert "static QDQ" in ort_int8["note"]
    if importlib.util.find_spec("nncf") is not None:  # OpenVINO's int8 through NNCF
        assert rows[("openvino", "int8")]["label_agreement"] is not None
