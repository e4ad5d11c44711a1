"""Slightly damaged files that the reference decodes whole: the bytes it reads.

Why: importing ModelScope's OFA preprocessors sets Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` for the whole process, so the reference
pipeline decodes some damaged files instead of refusing them. In two cases its
answer is exactly the intact photo. Both are common in the wild, so we accept
them too, by repairing their bytes before Pillow reads them:

- **A JPEG that lacks only its end-of-image marker** (an encoder or an upload
  that stopped two bytes early). The repaired bytes have the marker. They are
  used only when the scans in the file cover every component's every coefficient
  to full precision (``scans_complete``) and libjpeg-turbo then decodes them in
  strict mode, without a single warning, which means every scan's data is there.
  A file cut short is still refused: inside a scan, the reference fills the
  missing part with grey; at a progressive file's scan boundary, it answers on a
  coarser picture than the one sent.
- **A PNG whose only damage is a wrong checksum on ancillary chunks** (tEXt,
  gAMA, ...) before the image data. The flag makes Pillow skip those checksums
  and read the chunks as they are. The repaired bytes carry the right checksums,
  so Pillow reads the same chunk data. A wrong checksum on a critical chunk
  (IHDR, PLTE) is still refused, as the reference refuses it.

Everything else the flag lets through (data cut short in any format) is refused,
as docs/reliability.md says. Both repairs run only after Pillow has refused the
bytes as they are, so intact files never pay for them.
"""

from __future__ import annotations

import zlib

try:
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is pinned in requirements/engine.txt
    simplejpeg = None

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_PROGRESSIVE_FRAMES = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn, not DHT/JPG/DAC


def scans_complete(data: bytes) -> bool:
    """Whether the scans of the JPEG ``data`` (its first frame, up to an end marker or
    the end of the bytes) cover every component of the frame, and in a progressive
    frame every coefficient of every component down to the last bit (``Al`` 0)."""
    components: list[int] = []
    progressive = False
    sequential_seen: set[int] = set()
    final: dict[int, set[int]] = {}  # component -> coefficients with their last bit read
    pos = len(JPEG_SOI)
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return False
        if marker in _FRAMES:
            if components:
                break  # a second frame: the first one is what is judged
            if len(segment) < 6:
                return False
            progressive = marker in _PROGRESSIVE_FRAMES
            count = segment[5]
            components = [segment[6 + 3 * i] for i in range(count) if 6 + 3 * i < len(segment)]
        elif marker == 0xDA:  # SOS, then its entropy-coded data up to the next marker
            count = segment[0] if segment else 0
            ids = [segment[1 + 2 * i] for i in range(count) if 1 + 2 * i < len(segment)]
            if len(segment) < 1 + 2 * count + 3:
                return False
            start, end, approx = segment[1 + 2 * count : 4 + 2 * count]
            if approx & 0x0F == 0:  # Al 0: these coefficients are now complete
                for c in ids:
                    final.setdefault(c, set()).update(range(start, min(end, 63) + 1))
            sequential_seen.update(ids)
            pos = _end_of_entropy_data(data, pos + 2 + length)
            continue
        pos += 2 + length
    if not components:
        return False
    if not progressive:
        return set(components) <= sequential_seen
    return all(final.get(c, set()) >= set(range(64)) for c in components)


def _end_of_entropy_data(data: bytes, pos: int) -> int:
    """The position of the first marker after ``pos`` that is not a restart (RSTn) or
    a stuffed zero; the length of ``data`` where there is none."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


def jpeg_with_end_marker(data: bytes, mode: str) -> bytes | None:
    """``data`` with the end-of-image marker it lacks, where that is its only defect.

    ``mode`` is Pillow's mode for the file (CMYK files are checked in CMYK). None
    where ``data`` is no JPEG, where its scans do not cover the whole picture, or
    where the completed bytes still make libjpeg-turbo warn (data missing or
    corrupt, a format it cannot read).
    """
    if simplejpeg is None or not data.startswith(JPEG_SOI) or not scans_complete(data):
        return None
    completed = data + JPEG_EOI
    try:
        simplejpeg.decode_jpeg(
            completed, colorspace="CMYK" if mode == "CMYK" else "RGB", strict=True
        )
    except Exception:  # any libjpeg warning or error: not only the marker is missing
        return None
    return completed


def png_with_checksums(data: bytes) -> bytes | None:
    """``data`` with the right checksum on every ancillary chunk before the image data
    whose checksum is wrong; None where it is no PNG or there is nothing to repair."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    repaired = bytearray(data)
    changed = False
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_type = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if chunk_type == b"IDAT" or end + 4 > len(data):
            break  # Pillow checks no checksum from the image data on
        if chunk_type[0] & 0x20:  # lower-case first letter: ancillary (PNG spec, 5.4)
            crc = zlib.crc32(data[pos + 4 : end]).to_bytes(4, "big")
            if data[end : end + 4] != crc:
                repaired[end : end + 4] = crc
                changed = True
        pos = end + 4
    return bytes(repaired) if changed else None
