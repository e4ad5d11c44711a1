"""Opt-in GPU image path: nvJPEG decode and antialiased bicubic resize on the device.

Why: on a GPU host the CPU, not the accelerator, caps items/s once the model
is fast (docs/benchmarks.md, the image data path: most of it Pillow's bicubic
resize). Decoding with nvJPEG
(``torchvision.io.decode_jpeg`` on a list, batched) and resizing with
``interpolate(mode="bicubic", antialias=True)`` moves that work to the device.

It is NOT bit-identical to the reference: torch's antialiased bicubic (a=-0.5,
the same filter and support as Pillow's) accumulates in float where Pillow
uses 22-bit fixed point, and nvJPEG's IDCT/upsampling are not libjpeg-turbo's.
docs/benchmarks.md gives the resize part's fidelity measured on CPU (device="cpu"
runs this very code); the nvJPEG part is only measurable on a GPU.

Falls back to the exact CPU route (``image.load_pixels``) for everything that
is not a plain JPEG: other formats, CMYK/YCCK, EXIF orientation 2..8, MPO, files
not ending in EOI (maybe truncated: a device decoder may fill in gray where the
reference refuses), and any JPEG the device decoder refuses. torchvision is not an
engine dependency: it is imported on first use, with an error that says what to
install.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import jpeg
from .image import INPUT_NAME, load_pixels, open_checked
from .limits import InputLimits

TORCHVISION_HINT = (
    "the GPU image path (load_pixels_gpu / the engine's GPU-image option) needs "
    "torchvision built for the installed torch (e.g. torchvision==0.29.1 for torch 2.14, "
    "as in requirements/dev.txt); install it or leave the GPU image path off"
)


def _decode_jpeg() -> tuple[Callable[..., Any], Any]:
    """torchvision's decode_jpeg and ImageReadMode.RGB, imported only when used."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        raise RuntimeError(TORCHVISION_HINT) from e
    return decode_jpeg, ImageReadMode.RGB


def device_eligible(data: bytes, limits: InputLimits, input_name: str = INPUT_NAME) -> bool:
    """True for plain upright JPEGs (the device decodes them); raises InvalidInputError as
    ``load_pixels`` would for anything over the limits or undecodable in its header."""
    image = open_checked(data, limits, input_name)
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    if not data.endswith(b"\xff\xd9"):  # no EOI: maybe truncated; the CPU route decides
        return False
    orientation = jpeg.exif_orientation(image)
    return orientation is not None and not jpeg.is_rotated(orientation)


def resize_on_device(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """[3, H, W] uint8 tensors (any sizes, one device) -> [N, size, size, 3] uint8.

    Same-size images share one interpolate call; rounding is to nearest, then clamped,
    like Pillow's clip8 (which rounds its fixed-point sum).
    """
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    for indices in groups.values():
        batch = torch.stack([images[i] for i in indices]).float()
        resized = torch.nn.functional.interpolate(
            batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )
        pixels = resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out[torch.tensor(indices, device=out.device)] = pixels
    return out


def load_pixels_gpu(
    datas: Sequence[bytes],
    size: int,
    limits: InputLimits,
    *,
    device: str | torch.device = "cuda",
    input_name: str = INPUT_NAME,
) -> torch.Tensor:
    """Encoded images -> [N, size, size, 3] uint8 RGB on ``device`` (NHWC, as collate reads).

    Every item's header is checked first (the same limits and InvalidInputError
    messages as ``load_pixels``); the first bad item raises before any decode, so
    a caller can then prepare items one by one to fail only that one. JPEGs the
    device can take are decoded in one batched ``decode_jpeg`` call; the rest take
    the exact CPU route and are copied over. ``device="cpu"`` runs the same code
    on CPU (torchvision's libjpeg-turbo decode), for fidelity measurements.
    """
    device = torch.device(device)
    if not datas:
        return torch.empty((0, size, size, 3), dtype=torch.uint8, device=device)
    on_device = [device_eligible(data, limits, input_name) for data in datas]
    out = torch.empty((len(datas), size, size, 3), dtype=torch.uint8, device=device)
    jpeg_indices = [i for i, ok in enumerate(on_device) if ok]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg_indices:
        decode_jpeg, rgb = _decode_jpeg()
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg_indices]
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders
                warnings.simplefilter("ignore", DeprecationWarning)
                images = decode_jpeg(encoded, mode=rgb, device=device)
            decoded = dict(zip(jpeg_indices, images, strict=True))
        except RuntimeError:  # one bad file fails the batch: retry one by one
            for i, data in zip(jpeg_indices, encoded, strict=True):
                # A refused one takes the CPU route below (its pixels or today's error).
                with contextlib.suppress(RuntimeError), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded[i] = decode_jpeg(data, mode=rgb, device=device)
    if decoded:
        indices = list(decoded)
        out[torch.tensor(indices, device=device)] = resize_on_device(
            [decoded[i] for i in indices], size
        )
    for i, data in enumerate(datas):
        if i not in decoded:
            pixels = load_pixels(data, size, limits, input_name=input_name)
            out[i] = torch.from_numpy(np.array(pixels)).to(device)  # writable copy
    return out
