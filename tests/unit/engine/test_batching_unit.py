"""batching.py: prepared items into one right-padded batch, normalized on the device."""

from __future__ import annotations

import numpy as np
import torch
from ofa_ve_engine.batching import PreparedItem, collate, pad_ids


def _item(seed: int, text_len: int, prompt_len: int) -> PreparedItem:
    rng = np.random.default_rng(seed)
    return PreparedItem(
        pixels=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        input_ids=(0, *range(10, 10 + text_len), 2),
        decoder_prompt=(0, *range(10, 10 + prompt_len)),
    )


def test_pad_ids_right_pads_to_the_longest_row() -> None:
    assert pad_ids([[5], [6, 7, 8], [9, 9]], pad_id=1).tolist() == [
        [5, 1, 1],
        [6, 7, 8],
        [9, 9, 1],
    ]


def test_collate_shapes_padding_and_normalization() -> None:
    items = [_item(0, 3, 4), _item(1, 1, 1)]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    batch = collate(
        items,
        pad_id=1,
        device=torch.device("cpu"),
        dtype=torch.float32,
        mean=mean,
        std=std,
        channels_last=True,
    )
    assert batch.input_ids.tolist() == [[0, 10, 11, 12, 2], [0, 10, 2, 1, 1]]
    assert batch.decoder_prompts.tolist() == [[0, 10, 11, 12, 13], [0, 10, 1, 1, 1]]
    assert batch.prompt_lengths.tolist() == [5, 2]
    assert batch.images.shape == (2, 3, 8, 8)
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    pixels = np.stack([it.pixels for it in items]).astype(np.float32)
    want = (pixels / 255 - np.float32(mean)) / np.float32(std)  # the reference's float32 ops
    np.testing.assert_array_equal(batch.images.permute(0, 2, 3, 1).numpy(), want)


def test_collate_contiguous_and_other_dtypes() -> None:
    batch = collate(
        [_item(2, 2, 2)],
        pad_id=1,
        device=torch.device("cpu"),
        dtype=torch.bfloat16,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        channels_last=False,
    )
    assert batch.images.dtype == torch.bfloat16 and batch.images.is_contiguous()
    assert batch.input_ids.dtype == batch.decoder_prompts.dtype == torch.int64
