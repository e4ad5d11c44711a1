"""Per-item input limits, checked before any expensive work.

The defaults are generous for real photos and small enough that one hostile
request cannot take a server's memory: a 100000 x 100000 PNG header is refused
from its header alone, before a pixel is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest encoded image accepted, in bytes."""
    max_image_pixels: int = 40_000_000
    """Largest decoded image accepted, width x height (read from the header)."""
    max_text_bytes: int = 8192
    """Largest HYPOTHESIS or PREMISE accepted, in UTF-8 bytes. Longer text is refused,
    not truncated: OFA keeps only the first 256 words anyway, and silently judging a
    different sentence than the one sent is worse than a clear error."""

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "max_text_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"InputLimits.{name} must be positive")
