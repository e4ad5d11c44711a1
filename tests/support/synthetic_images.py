"""Small synthetic images for tests that need many distinct, cheap, encoded inputs.

Real photographs (tests/data/images) test decoding; these test everything after it,
where the content only has to differ from item to item.
"""

from __future__ import annotations

import io

from PIL import Image


def png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    """A PNG of one colour with a few contrasting pixels (so images differ beyond colour)."""
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 5):
        image.putpixel((x, x % size[1]), (255 - color[0], 30, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
