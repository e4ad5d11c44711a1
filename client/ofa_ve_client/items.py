"""One unit of work: (image, hypothesis, premise), as callers write it and as it is sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import InvalidInputError
from .images import ImageInput, load_image
from .url_fetch import UrlFetcher


class Item(NamedTuple):
    """An item for predict_batch; plain tuples and dicts with these keys work too."""

    image: ImageInput
    hypothesis: str
    premise: str | None = None


@dataclass(frozen=True)
class PreparedItem:
    """An item ready for the wire: image bytes and UTF-8 text."""

    image: bytes
    hypothesis: bytes
    premise: bytes  # b"" means "no premise" (interface.md: empty means the image alone)


def as_item(obj: Any) -> Item:
    """Accept Item, (image, hypothesis[, premise]) or {'image', 'hypothesis'[, 'premise']}."""
    if isinstance(obj, Item):
        return obj
    if isinstance(obj, Mapping):
        missing = [key for key in ("image", "hypothesis") if key not in obj]
        if missing:
            name = missing[0].upper()
            raise InvalidInputError(f"{name}: missing from the item", input_name=name)
        unknown = set(obj) - {"image", "hypothesis", "premise"}
        if unknown:
            raise InvalidInputError(f"item has unknown keys: {', '.join(sorted(unknown))}")
        return Item(obj["image"], obj["hypothesis"], obj.get("premise"))
    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
        return Item(*obj)
    raise InvalidInputError(
        f"item must be Item, (image, hypothesis[, premise]) or a dict, not {type(obj).__name__}"
    )


def encode_text(value: Any, name: str, *, required: bool) -> bytes:
    """UTF-8 bytes of a text input; InvalidInputError naming the input when it is unusable."""
    if value is None:
        if required:
            raise InvalidInputError(f"{name}: is required", input_name=name)
        return b""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"{name}: not valid UTF-8 ({exc.reason})", input_name=name
            ) from None
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{name}: must be a str, not {type(value).__name__}", input_name=name
        )
    if required and not value.strip():
        raise InvalidInputError(f"{name}: is empty", input_name=name)
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name}: not encodable as UTF-8 ({exc.reason})", input_name=name
        ) from None


def prepare(item: Any, fetcher: UrlFetcher) -> PreparedItem:
    """Validate the text first (cheap), then load the image (may read a file or fetch a URL)."""
    it = as_item(item)
    hypothesis = encode_text(it.hypothesis, "HYPOTHESIS", required=True)
    premise = encode_text(it.premise, "PREMISE", required=False)
    return PreparedItem(load_image(it.image, fetcher), hypothesis, premise)


def needs_thread(item: Any) -> bool:
    """Whether preparing `item` may block (file, URL, PNG encoding): async code offloads those."""
    image = (
        item.get("image")
        if isinstance(item, Mapping)
        else (item[0] if isinstance(item, (tuple, list)) and item else None)
    )
    return not isinstance(image, (bytes, bytearray, memoryview))
