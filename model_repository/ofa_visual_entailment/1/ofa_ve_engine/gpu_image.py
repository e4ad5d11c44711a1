"""Opt-in GPU image path: nvJPEG decode and antialiased bicubic resize on the device.

Why: on a GPU host the CPU, not the accelerator, caps items/s once the model is
fast; most of an item's CPU time is the JPEG decode and Pillow's bicubic resize.
Decoding with nvJPEG (``torchvision.io.decode_jpeg`` on a list, batched) and
resizing with ``interpolate(mode="bicubic", antialias=True)`` moves that work to
the device. It is NOT bit-identical to the reference (float accumulation against
Pillow's fixed point; nvJPEG's IDCT and upsampling are not libjpeg-turbo's); the GPU
check measures how far it strays (docs/gpu-check.md).

Only plain upright JPEGs go to the device (``device_eligible``); everything else takes
the exact CPU route (``image.load_pixels``). ``GpuImageDecoder`` owns what can go wrong
on the device: a file nvJPEG refuses takes the CPU route alone (reason ``bad_file``);
a failure that is not about one file (torchvision or nvJPEG missing, out of memory, a
decoder that cannot start) turns the decoder off for the engine's lifetime, with one
log line. Every item that took the CPU route instead of nvJPEG is counted by reason
(``take_fallbacks``), for the server's metrics (``EngineStats``).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import jpeg
from .errors import InvalidInputError
from .image import INPUT_NAME, load_pixels, open_checked
from .limits import InputLimits

log = logging.getLogger(__name__)

TORCHVISION_HINT = (
    "the GPU image path (image_path=gpu) needs torchvision built for the installed torch "
    "(e.g. torchvision==0.29.1 for torch 2.14, as in requirements/dev.txt); install it or "
    "leave the GPU image path off"
)

FALLBACK_REASONS = ("bad_file", "no_nvjpeg", "out_of_memory", "decoder_error")
"""Why an eligible JPEG took the CPU route: nvJPEG refused that file; torchvision or
nvJPEG is missing; the device ran out of memory; the decoder failed on a known-good
JPEG too. All but ``bad_file`` turn the decoder off."""

CHUNK_PIXELS = 48_000_000
"""Decoded pixels held on the device at once (about four 12 MP photos): the decode and
float resize of a batch of camera photos run in chunks of at most this many pixels."""


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
    return _eligible_size(data, limits, input_name) is not None


def _eligible_size(data: bytes, limits: InputLimits, input_name: str) -> tuple[int, int] | None:
    """(width, height) of a plain upright JPEG, None for anything the CPU route takes."""
    image = open_checked(data, limits, input_name)
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    if not data.endswith(b"\xff\xd9"):  # no EOI: maybe truncated; the CPU route decides
        return None
    orientation = jpeg.exif_orientation(image)
    if orientation is None or jpeg.is_rotated(orientation):
        return None
    return image.size


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


def _chunks(sizes: Sequence[tuple[int, int]], limit: int) -> list[list[int]]:
    """Consecutive index runs whose pixels add up to at most ``limit`` (one at least)."""
    runs: list[list[int]] = []
    held = limit
    for index, (width, height) in enumerate(sizes):
        if held + width * height > limit:
            runs.append([])
            held = 0
        runs[-1].append(index)
        held += width * height
    return runs


def _probe_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 140, 200)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class GpuImageDecoder:
    """nvJPEG decode and resize for one engine, with its fallbacks counted and bounded.

    Args:
        size: the square side the model reads (``patch_image_size``).
        limits: the input limits every item's header is checked against.
        device: where the pixels go (``cpu`` runs this code with torchvision's CPU
            decoder, for tests and fidelity measurements).
    """

    def __init__(self, size: int, limits: InputLimits, device: str | torch.device) -> None:
        self.size = size
        self.limits = limits
        self.device = torch.device(device)
        self.off_reason: str | None = None
        """Why the decoder is off (one of FALLBACK_REASONS), None while it is on."""
        self.decoded = 0
        """JPEGs nvJPEG decoded since the engine started."""
        self._fallbacks: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def take_fallbacks(self) -> dict[str, int]:
        """Items that took the CPU route instead of nvJPEG since the last call, by reason."""
        with self._lock:
            counts, self._fallbacks = dict(self._fallbacks), Counter()
        return counts

    def load(
        self, datas: Sequence[bytes], input_name: str = INPUT_NAME
    ) -> tuple[torch.Tensor, dict[int, InvalidInputError]]:
        """Encoded images -> [N, size, size, 3] uint8 RGB on the device (NHWC, as collate
        reads), and the error of each item that no route could read (its pixels are 0)."""
        out = torch.zeros((len(datas), self.size, self.size, 3), dtype=torch.uint8,
                          device=self.device)
        errors: dict[int, InvalidInputError] = {}
        sizes: dict[int, tuple[int, int]] = {}
        for i, data in enumerate(datas):
            try:
                found = _eligible_size(data, self.limits, input_name)
            except InvalidInputError as exc:
                errors[i] = exc
                continue
            if found is not None:
                sizes[i] = found
        on_cpu = [i for i in range(len(datas)) if i not in errors and i not in sizes]
        eligible = list(sizes)
        for run in _chunks([sizes[i] for i in eligible], CHUNK_PIXELS):
            indices = [eligible[k] for k in run]
            refused = self._decode_into(out, indices, datas)
            on_cpu += refused
        for i in sorted(on_cpu):
            try:
                pixels = load_pixels(datas[i], self.size, self.limits, input_name=input_name)
            except InvalidInputError as exc:
                errors[i] = exc
                continue
            out[i] = torch.from_numpy(np.array(pixels)).to(self.device)  # writable copy
        return out, errors

    def _decode_into(
        self, out: torch.Tensor, indices: list[int], datas: Sequence[bytes]
    ) -> list[int]:
        """Decode and resize ``indices`` on the device into ``out``; returns those left to
        the CPU route (all of them while the decoder is off)."""
        if self.off_reason is not None:
            self._count(self.off_reason, len(indices))
            return indices
        try:
            decode_jpeg, rgb = _decode_jpeg()
        except RuntimeError as exc:
            self._turn_off("no_nvjpeg", exc, len(indices))
            return indices
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in indices]
        try:
            images = self._decode(decode_jpeg, rgb, encoded)
        except torch.cuda.OutOfMemoryError as exc:
            self._turn_off("out_of_memory", exc, len(indices))
            return indices
        except RuntimeError as exc:  # one bad file fails the batch: which, or all?
            if not self._healthy(decode_jpeg, rgb):
                self._turn_off("decoder_error", exc, len(indices))
                return indices
            images, refused = [], []
            for position, (i, data) in enumerate(zip(indices, encoded, strict=True)):
                try:
                    images.append(self._decode(decode_jpeg, rgb, [data])[0])
                except torch.cuda.OutOfMemoryError as oom:  # not the file's fault
                    rest = indices[position:]
                    self._turn_off("out_of_memory", oom, len(rest))
                    refused += rest
                    break
                except RuntimeError as one:
                    refused.append(i)
                    self._count("bad_file", 1)
                    self._note("bad_file", one)
            indices = [i for i in indices if i not in refused]
            if not indices:
                return refused
        else:
            refused = []
        try:
            out[torch.tensor(indices, device=out.device)] = resize_on_device(images, self.size)
        except torch.cuda.OutOfMemoryError as exc:
            self._turn_off("out_of_memory", exc, len(indices))
            return refused + indices
        with self._lock:
            self.decoded += len(indices)
        return refused

    def _decode(self, decode_jpeg: Callable[..., Any], rgb: Any, encoded: list) -> list:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders
            warnings.simplefilter("ignore", DeprecationWarning)
            return list(decode_jpeg(encoded, mode=rgb, device=self.device))

    def _healthy(self, decode_jpeg: Callable[..., Any], rgb: Any) -> bool:
        """Whether the decoder still reads a known-good JPEG (the failure was the files')."""
        probe = torch.frombuffer(bytearray(_probe_jpeg()), dtype=torch.uint8)
        try:
            self._decode(decode_jpeg, rgb, [probe])
        except RuntimeError:
            return False
        return True

    def _count(self, reason: str, items: int) -> None:
        if items:
            with self._lock:
                self._fallbacks[reason] += items

    def _note(self, reason: str, exc: BaseException) -> None:
        """Log a cause once per decoder lifetime."""
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("GPU image path: a JPEG nvJPEG refused takes the CPU route (%s: %s); "
                        "such files are counted, not logged again", reason, exc)

    def _turn_off(self, reason: str, exc: BaseException, items: int) -> None:
        self.off_reason = reason
        self._count(reason, items)
        log.error("GPU image path turned off for this engine (%s: %s: %s); JPEGs take the "
                  "exact CPU route from now on", reason, type(exc).__name__, str(exc)[:300])


def load_pixels_gpu(
    datas: Sequence[bytes],
    size: int,
    limits: InputLimits,
    *,
    device: str | torch.device = "cuda",
    input_name: str = INPUT_NAME,
) -> torch.Tensor:
    """Encoded images -> [N, size, size, 3] uint8 RGB on ``device``, in one call.

    A one-shot ``GpuImageDecoder`` that raises instead of falling back: the first item no
    route can read raises its InvalidInputError, and a missing torchvision raises the
    RuntimeError that says what to install. ``device="cpu"`` runs the same code on CPU
    (torchvision's libjpeg-turbo decode), for fidelity measurements.
    """
    _decode_jpeg()
    pixels, errors = GpuImageDecoder(size, limits, device).load(datas, input_name)
    if errors:
        raise errors[min(errors)]
    return pixels
