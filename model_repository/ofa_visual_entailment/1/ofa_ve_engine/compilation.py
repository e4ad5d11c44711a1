"""``torch.compile`` of the stem (the ResNet): the one part of the network where it pays.

Inductor with ``freezing`` turns every convolution of the stem into a oneDNN
convolution with prepacked weights and folds the residual add and ReLU into it,
which cuts the stem's CPU time (docs/benchmarks.md; features move by float
rounding). Compiling the transformer layers gained nothing on CPU (their matmuls
and attention are library calls already) and took long, so they stay eager.

Compilation is lazy in torch; ``compile_stem`` runs the stem once at every
batch size it will see, so the seconds it takes (and any failure, such as a
missing C++ compiler) happen while the model loads, not on the first request.
Shapes stay few: with an image chunk of c the stem only sees 1..c images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def compile_stem(
    stem: nn.Module,
    *,
    example: torch.Tensor,
    batch_sizes: Iterable[int],
    memory_format: torch.memory_format = torch.contiguous_format,
    dynamic: bool | None = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A compiled stand-in for ``stem``, already compiled at each of ``batch_sizes``, so
    that any failure is a RuntimeError saying what to do here, not on a first request.

    Args:
        stem: the (folded) ResNet.
        example: one input image [1, 3, P, P] in the dtype and on the device the
            engine feeds; with ``memory_format``, what the graphs are compiled for.
        batch_sizes: every batch size the stem will see.
        dynamic: None lets torch mark the batch dimension dynamic after the first
            new size (whole passes of varying size, as on GPUs).
    """
    from torch._inductor import config as inductor_config

    compiled = torch.compile(stem, dynamic=dynamic)

    def run(images: torch.Tensor) -> torch.Tensor:
        # Freezing (weights as constants: prepacking, conv+add+relu fusion) applies
        # while a graph compiles; patching per call keeps it out of global state.
        with inductor_config.patch(freezing=True):
            return compiled(images)

    with torch.inference_mode():
        for size in sorted(set(batch_sizes)):
            batch = example.expand(size, *example.shape[1:])
            batch = batch.contiguous(memory_format=memory_format)
            try:
                run(batch)
            except Exception as exc:  # inductor raises many kinds; all mean "not usable"
                raise RuntimeError(
                    f"torch.compile of the ResNet stem failed at batch size {size}: {exc!r}. "
                    "On CPU inductor needs a C++ compiler (g++) at run time; turn `compile` "
                    "off to run eagerly."
                ) from exc
    return run
