"""One image, one stem pass: sharing an image's embedding between items with the same image.

The ResNet stem is most of OFA-tiny's compute (about 30 of 38.5 GFLOP per item),
and it and the patch projection after it (`OFAEncoder.embed_image`) depend on the
image alone. Items carry a digest of their encoded image (`PreparedItem.image_key`).
`ImageEmbeddings` hands each forward pass the patch embeddings of its items,
computing them once per distinct image. Within one `predict` call they are kept
for as long as a later pass still needs them. Across calls they come from an
optional bounded LRU cache (`StemCache`, off by default), so a client that sends
the same image in several requests gains too. An image that several items of one
call share also gets the first encoder layer's attention among its patches once
(`modeling.PatchAttention`); that part is not cached across calls.

The embedding of one item is [P/16, P/16, d_model] in the network's dtype: 0.9 MB
in float32 and 0.5 MB in half precision at P = 480 (d_model 256), a quarter of
the stem's own [1024, P/16, P/16] output. That is what one cache entry costs, in
the device's memory.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

from .batching import PreparedItem
from .modeling import PatchAttention

Key = Hashable


def image_key(data: bytes) -> bytes:
    """Digest of an encoded image: equal bytes, equal key (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).digest()


class StemCache:
    """A bounded LRU of image embeddings by image key, with hit and miss counts."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"stem cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> torch.Tensor | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: Key, embeds: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        self._entries[key] = embeds
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def bytes_used(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._entries.values())


def item_keys(items: Sequence[PreparedItem]) -> list[Key]:
    """Each item's sharing key: its image digest, or itself (PIL input has none)."""
    return [item.image_key if item.image_key is not None else ("item", id(item)) for item in items]


class ImageEmbeddings:
    """The image embeddings for the passes of one `predict` call (one instance per call).

    With ``attend`` (``OFAEncoder.patch_attention``), an image that several items of
    the call share also gets the first encoder layer's attention among its patches
    once (``PatchAttention``), and a pass whose images are all shared gets it too.
    """

    def __init__(
        self,
        items: Sequence[PreparedItem],
        compute: Callable[[Sequence[PreparedItem]], torch.Tensor],
        cache: StemCache | None = None,
        attend: Callable[[torch.Tensor], PatchAttention] | None = None,
    ) -> None:
        self._compute = compute
        self._cache = cache if cache is not None and cache.capacity > 0 else None
        self._attend = attend
        self._uses = Counter(item_keys(items))
        self._remaining = Counter(self._uses)
        self._held: dict[Key, torch.Tensor] = {}
        self._attention: dict[Key, PatchAttention] = {}

    def for_pass(self, items: Sequence[PreparedItem]) -> tuple[torch.Tensor, PatchAttention | None]:
        """[len(items), h, w, D] embeddings, computed for images not seen yet and reused
        otherwise; and the pass's ``PatchAttention`` where every image in it is shared
        by several items of the call (else None: the encoder computes it per item)."""
        keys = item_keys(items)
        missing: dict[Key, PreparedItem] = {}
        for key, item in zip(keys, items, strict=True):
            if key in self._held or key in missing:
                continue
            cached = self._cache.get(key) if self._cache is not None else None
            if cached is not None:
                self._held[key] = cached
            else:
                missing[key] = item
        if missing and len(missing) == len(keys) and len(set(keys)) == len(keys):
            embeds = self._compute(items)  # nothing shared: no gather, no copy
            fresh = dict(zip(keys, embeds, strict=True))
        else:
            fresh = {}
            if missing:
                computed = self._compute(list(missing.values()))
                fresh = dict(zip(missing, computed, strict=True))
            embeds = None
        for key, value in fresh.items():
            if self._cache is not None:
                self._cache.put(key, value.clone())  # a view would keep its whole batch
            self._held[key] = value
        if embeds is None and len(keys) == 1:
            embeds = self._held[keys[0]].unsqueeze(0)  # a view: no copy
        elif embeds is None:
            embeds = torch.stack([self._held[key] for key in keys])
        patches = self._patch_attention(keys)
        for key in keys:  # forget what no later pass of this call needs
            self._remaining[key] -= 1
            if self._remaining[key] == 0:
                self._held.pop(key, None)
                self._attention.pop(key, None)
        return embeds, patches

    def _patch_attention(self, keys: list[Key]) -> PatchAttention | None:
        if self._attend is None or any(self._uses[key] < 2 for key in keys):
            return None  # an image seen once: computing its part apart would cost more
        for key in keys:
            if key not in self._attention:
                self._attention[key] = self._attend(self._held[key].unsqueeze(0))
        if len(set(keys)) == 1:
            return self._attention[keys[0]]  # batch 1: broadcast over the pass
        return PatchAttention.stack([self._attention[key] for key in keys])
