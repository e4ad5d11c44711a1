#!/usr/bin/env python3
"""Export the whole network, as the engine runs it for one pass, to ONNX, and check it.

    python -m ofa_ve_ops.export_onnx --model-dir DIR --out FILE.onnx [--opset N]

Why: ONNX is how the network reaches the other runtimes (ONNX Runtime, OpenVINO on
CPU; TensorRT on a GPU), and how `ofa_ve_bench.peers` measures the engine against
them on the same graph. The graph is one forward pass of ``engine.predict``: uint8
pixels normalized as ``batching.collate`` does, the ResNet stem, the encoder, the
decoder and the three answers scored (``scoring.AnswerScorer``'s one-pass path), out
come the probabilities in LABELS order. ``OnePassNetwork`` is a thin wrapper around
the engine's own modules, so the export follows the network wherever it changes.

Inputs (``network_inputs`` builds them from prepared items; batch and text lengths
are dynamic):

    pixels          [B, P, P, 3] uint8  (PreparedItem.pixels stacked)
    input_ids       [B, L] int64        right-padded with the tokenizer's pad id
    decoder_prompts [B, T] int64        right-padded
    prompt_lengths  [B] int64           real length of each decoder prompt
    -> probs        [B, 3] float32      LABELS order (entailment, neutral, contradiction)

The encoder's position biases depend on positions alone; the engine caches them per
text length, and the graph carries them as constants covering ``--max-text-length``
tokens (default: the longest source ``prepare`` makes, max_src_length + BOS + EOS).

The exported file is checked with ONNX Runtime against the engine on the test
images (``ofa_ve_data.workload``, in batches of a few items, so padding and the
dynamic axes are exercised); where a probability differs by more than ``--tolerance``
(1e-4) the file is not written and the tool exits 1.

Exporter: the TorchScript one (``dynamo=False``). Why: the encoder decides on the
data whether a batch has padding (``bool(text_pad.any())``), which ``torch.export``
refuses as a data-dependent branch; the tracer records the padded path (the example
batch is padded on purpose), which gives the same numbers for unpadded batches.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ofa_ve_engine import LABELS, PreparedItem, VisualEntailmentEngine
from ofa_ve_engine.batching import normalize_pixels, pad_ids
from ofa_ve_engine.labels import ANSWERS
from PIL import Image
from torch import nn

DEFAULT_OPSET = 17
"""LayerNormalization is an operator from 17 on (one node instead of a dozen)."""
DEFAULT_TOLERANCE = 1e-4
"""Largest probability difference to the engine accepted in float32."""
CHECK_BATCH = 3
"""Items per ONNX Runtime call in the check: padded batches and a last partial one."""
INPUT_NAMES = ("pixels", "input_ids", "decoder_prompts", "prompt_lengths")
OUTPUT_NAMES = ("probs",)
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "pixels": {0: "batch"},
    "input_ids": {0: "batch", 1: "text_length"},
    "decoder_prompts": {0: "batch", 1: "prompt_length"},
    "prompt_lengths": {0: "batch"},
    "probs": {0: "batch"},
}


class ExportError(RuntimeError):
    """The network cannot be exported as asked, or the export does not match the engine."""


class OnePassNetwork(nn.Module):
    """One forward pass of the engine as a module of tensors: pixels and token ids in,
    probabilities in LABELS order out. Holds the engine's modules, copies nothing."""

    def __init__(self, engine: VisualEntailmentEngine) -> None:
        super().__init__()
        if engine.linear_backend != "aten" or engine.stem_backend != "aten":
            raise ExportError(
                "export an engine loaded with linear_backend='aten' and stem_backend='aten' "
                f"(this one runs {engine.linear_backend} linear layers and a "
                f"{engine.stem_backend} stem, which ONNX cannot express)"
            )
        if not engine.scorer.single_token:
            raise ExportError(
                "the answers are not single distinct tokens: their teacher-forced scoring "
                "is Python per item, which one graph cannot express"
            )
        self.model = engine.model
        self.scorer = engine.scorer
        self.mean = tuple(engine.settings.mean)
        self.std = tuple(engine.settings.std)
        self.dtype = engine.dtype
        answers = list(engine.settings.answers)
        self.label_columns = [answers.index(a) for a in ANSWERS]

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        decoder_prompts: torch.Tensor,
        prompt_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """[B, 3] probabilities in LABELS order; the inputs as in the module docstring."""
        images = normalize_pixels(pixels.permute(0, 3, 1, 2), self.mean, self.std, self.dtype)
        encoded = self.model.encoder(input_ids, images)
        probs = self.scorer.score(self.model, encoded, decoder_prompts, prompt_lengths)
        return probs[:, self.label_columns].float()


def network_inputs(items: Sequence[PreparedItem], pad_id: int) -> dict[str, np.ndarray]:
    """The graph's inputs for ``items`` (one batch), padded as ``batching.collate`` pads."""
    if any(item.pixels is None for item in items):
        raise ValueError("items must carry decoded pixels (not the GPU image path)")
    prompts = [item.decoder_prompt for item in items]
    return {
        "pixels": np.stack([np.asarray(item.pixels, dtype=np.uint8) for item in items]),
        "input_ids": pad_ids([item.input_ids for item in items], pad_id),
        "decoder_prompts": pad_ids(prompts, pad_id),
        "prompt_lengths": np.array([len(p) for p in prompts], dtype=np.int64),
    }


def load_engine(model_dir: Path) -> VisualEntailmentEngine:
    """The engine as the export needs it: CPU, float32, every module in plain aten."""
    return VisualEntailmentEngine.from_model_dir(
        model_dir, device="cpu", dtype=torch.float32, linear_backend="aten", stem_backend="aten"
    )


def default_max_text_length(engine: VisualEntailmentEngine) -> int:
    """The longest encoder input ``prepare`` makes: max_src_length BPE tokens, BOS, EOS."""
    return engine.settings.max_src_length + 2


def example_items(engine: VisualEntailmentEngine) -> list[PreparedItem]:
    """Two items of different text lengths: the traced batch must be padded (the
    encoder's padded path is the one that is right for every batch)."""
    image = Image.new("RGB", (64, 48), (120, 160, 200))
    return [
        engine.prepare(image, "a dog."),
        engine.prepare(image, "two people stand next to a red car.", "a photo of a street."),
    ]


def export(
    engine: VisualEntailmentEngine,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    max_text_length: int | None = None,
) -> None:
    """Write the engine's one-pass network to ``out`` (no check: see ``check``).

    Args:
        engine: from ``load_engine`` (CPU, float32, aten modules).
        opset: the ONNX opset.
        max_text_length: the longest ``input_ids`` the graph accepts (default
            ``default_max_text_length``): the position biases cover that many tokens.
    """
    network = OnePassNetwork(engine).eval()
    size = engine.settings.patch_image_size
    patches = math.ceil(size / 16)  # the stem's output side: every stride-2 step rounds up
    longest = max_text_length or default_max_text_length(engine)
    # Build the cached position table for the longest text first: the trace then slices
    # it to each batch's length instead of baking in the example's.
    engine.model.encoder._position_table(patches, patches, longest, engine.dtype)
    inputs = network_inputs(example_items(engine), engine.tokenizer.pad_id)
    args = tuple(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Known and harmless here: the tracer's notes on Python values (the padded branch
        # and the cached table, both on purpose, see above), the legacy exporter's
        # deprecation, and aten::index with negative indices (prompt_lengths - 1 >= 0).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            network,
            args,
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(out))  # the ONNX spec's own checks (as TensorRT's parser needs)


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session over ``path`` with ``threads`` intra-op threads
    (default: torch's, so both run on the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(
    run: Any, items: Sequence[PreparedItem], pad_id: int, batch: int
) -> np.ndarray:
    """[N, 3] probabilities from ``run(inputs) -> [b, 3]`` over ``items`` in batches."""
    parts = [
        np.asarray(run(network_inputs(items[i : i + batch], pad_id)), dtype=np.float32)
        for i in range(0, len(items), batch)
    ]
    return np.concatenate(parts)


def check(
    engine: VisualEntailmentEngine,
    path: Path,
    items: Sequence[PreparedItem],
    *,
    batch: int = CHECK_BATCH,
) -> float:
    """Largest probability difference between ONNX Runtime on ``path`` and
    ``engine.predict`` over ``items`` (ONNX Runtime in batches of ``batch``)."""
    session = ort_session(path)
    got = run_batches(lambda x: session.run(None, x)[0], items, engine.tokenizer.pad_id, batch)
    want = engine.predict(items)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise ExportError(f"ONNX Runtime gave {got.shape} (finite: {np.isfinite(got).all()})")
    return float(np.abs(got - want).max())


def workload_items(engine: VisualEntailmentEngine) -> list[PreparedItem]:
    """Every test image with the load texts, prepared (the check's items)."""
    from ofa_ve_data import workload  # the one list of test images (dev tools)

    return [engine.prepare(image, h, p or None) for image, h, p in workload.items()]


def export_checked(
    model_dir: Path,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    max_text_length: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    items: Sequence[PreparedItem] | None = None,
) -> float:
    """Export, check against the engine, and only then put the file at ``out``.

    Returns the largest probability difference; raises ExportError (nothing written)
    when it exceeds ``tolerance``. ``items``: the check's (default: the workload's).
    """
    engine = load_engine(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / out.name
        export(engine, staged, opset=opset, max_text_length=max_text_length)
        difference = check(engine, staged, items if items is not None else workload_items(engine))
        if not difference <= tolerance:
            raise ExportError(
                f"ONNX Runtime's probabilities differ from the engine's by {difference:.3g} "
                f"(more than {tolerance:g}); not written"
            )
        os.replace(staged, out)
    return difference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export the OFA visual-entailment network (stem, encoder, decoder, the "
        "three answers scored) to ONNX, with dynamic batch and text length, and check it "
        "with ONNX Runtime against the engine on the test images."
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="ModelScope model dir")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17)")
    parser.add_argument(
        "--max-text-length",
        type=int,
        default=None,
        help="longest input_ids the graph takes (default: max_src_length + 2, all the "
        "engine makes); the position biases it carries grow with its square",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest probability difference to the engine accepted ({DEFAULT_TOLERANCE:g})",
    )
    args = parser.parse_args(argv)
    try:
        difference = export_checked(
            args.model_dir,
            args.out,
            opset=args.opset,
            max_text_length=args.max_text_length,
            tolerance=args.tolerance,
        )
    except ExportError as e:
        print(f"export_onnx: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, opset {args.opset}, "
        f"outputs {', '.join(LABELS)}); ONNX Runtime within {difference:.2g} of the engine"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
