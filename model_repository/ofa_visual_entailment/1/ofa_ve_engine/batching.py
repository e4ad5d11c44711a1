"""Turning prepared items into one padded batch on the engine's device.

Text is right-padded to the longest item in the batch (not to a fixed length),
which with OFA's absolute text positions and key-padding masks leaves every
item's result what it would be alone. Pixels travel as uint8 and are scaled
and normalized on the device with the reference's float32 operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PreparedItem:
    """One request item after CPU preprocessing, ready to batch."""

    pixels: np.ndarray | None
    """[P, P, 3] uint8, resized RGB; None when ``encoded`` is decoded on the device."""
    input_ids: tuple[int, ...]
    """Encoder tokens: BOS, BPE of the prompt, EOS."""
    decoder_prompt: tuple[int, ...]
    """Decoder input before the answer: the source without EOS, or BOS alone."""
    encoded: bytes | None = None
    """The JPEG file itself, for the GPU image path (header already checked)."""
    image_digest: bytes | None = None
    """``image_sharing.image_digest`` of the encoded image: items with the same digest
    share one decode and one set of patch embeddings; None for PIL images."""


@dataclass
class Batch:
    input_ids: torch.Tensor
    """[B, L] int64, right-padded."""
    images: torch.Tensor | None
    """[B, 3, P, P] normalized, in the model's dtype (None when not asked for)."""
    decoder_prompts: torch.Tensor
    """[B, T] int64, right-padded."""
    prompt_lengths: torch.Tensor
    """[B] int64, real length of each decoder prompt."""


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """Right-pad token rows to the longest one."""
    out = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def collate(
    items: Sequence[PreparedItem],
    *,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool,
    pixels: torch.Tensor | None = None,
    with_images: bool = True,
) -> Batch:
    """Stack, pad and move a batch; pixels are normalized on ``device`` in float32, as
    the reference does, and only then cast to ``dtype``.

    Args:
        pad_id: the tokenizer's padding id.
        mean, std: the model's pixel normalization, per channel.
        channels_last: keep the images NHWC in memory (the uint8 pixels' own layout).
        pixels: the batch's [B, P, P, 3] uint8 pixels already on ``device`` (the GPU
            image path decodes there); None: stacked from the items.
        with_images: False for the text tensors only (the patch embeddings come from
            elsewhere).
    """
    prompts = [item.decoder_prompt for item in items]
    text = {
        "input_ids": torch.from_numpy(pad_ids([it.input_ids for it in items], pad_id)).to(device),
        "decoder_prompts": torch.from_numpy(pad_ids(prompts, pad_id)).to(device),
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device),
    }
    if not with_images:
        return Batch(images=None, **text)
    if pixels is None:
        pixels = torch.from_numpy(np.stack([item.pixels for item in items]))
        if device.type == "cuda":
            pixels = pixels.pin_memory()
    pixels = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view, NHWC memory
    if not channels_last:
        pixels = pixels.contiguous()
    return Batch(images=normalize_pixels(pixels, mean, std, dtype), **text)


def normalize_pixels(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """[B, 3, P, P] uint8 -> normalized images in ``dtype``, with the reference's float32
    operations. One function so that the exported graph (``ofa_ve_ops.export_onnx``)
    normalizes exactly as a forward pass does."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device)[None, :, None, None]
    return pixels.to(torch.float32).div(255).sub(mean_t).div(std_t).to(dtype)
