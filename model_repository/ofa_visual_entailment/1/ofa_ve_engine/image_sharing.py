"""Image sharing: items with the same image share one decode, one stem pass, one projection.

The stem (the ResNet) is most of OFA-tiny's compute (about 30 of 38.5 GFLOP per
item), and it and the projection after it depend on the image alone. One key
says "same image" at every layer: ``image_digest`` of the encoded bytes, computed
once per item (by the ExecutionRunner, else by ``prepare``) and carried as
``PreparedItem.image_digest``. The runner decodes each digest once;
``PatchEmbeddings`` computes each digest's patch embeddings once per ``predict``
call, and the first encoder layer's attention among its patches once where
several items of the call share it (``modeling.PatchAttention``); across calls
they come from an optional LRU cache (``PatchEmbeddingCache``, off by default,
config parameter ``stem_cache_items``).

One cache entry is one image's patch embeddings, [P/16, P/16, d_model] in the
network's dtype on its device: 0.9 MB in float32 at P = 480, d_model 256.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

from .batching import PreparedItem
from .modeling import PatchAttention

Key = Hashable
"""What ``PatchEmbeddings`` shares by: an image digest, or an item of its own."""


def image_digest(data: bytes) -> bytes:
    """The one "same image" key: equal encoded bytes, equal digest (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).digest()


class PatchEmbeddingCache:
    """A bounded LRU of patch embeddings by image digest, with hit and miss counts."""

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

    def discard(self, key: Key) -> None:
        """Forget ``key`` (its image turned out unreadable: its embeddings are of zeros)."""
        self._entries.pop(key, None)

    def bytes_used(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._entries.values())


def sharing_keys(items: Sequence[PreparedItem]) -> list[Key]:
    """Each item's key: its image digest, or the item itself (PIL input has no digest)."""
    return [
        item.image_digest if item.image_digest is not None else ("item", id(item))
        for item in items
    ]


class PatchEmbeddings:
    """The patch embeddings of one ``predict`` call's items, one computation per image.

    Args:
        items: every item of the call (to know how long each image is needed).
        compute: items -> their patch embeddings [len(items), h, w, D].
        cache: kept across calls (None or capacity 0: off).
        attend: ``OFAEncoder.patch_attention``: an image several items of the call
            share also gets the first layer's attention among its patches once.
    """

    def __init__(
        self,
        items: Sequence[PreparedItem],
        compute: Callable[[Sequence[PreparedItem]], torch.Tensor],
        cache: PatchEmbeddingCache | None = None,
        attend: Callable[[torch.Tensor], PatchAttention] | None = None,
    ) -> None:
        self._compute = compute
        self._cache = cache if cache is not None and cache.capacity > 0 else None
        self._attend = attend
        self._uses = Counter(sharing_keys(items))
        self._remaining = Counter(self._uses)
        self._held: dict[Key, torch.Tensor] = {}
        self._attention: dict[Key, PatchAttention] = {}

    def for_pass(self, items: Sequence[PreparedItem]) -> tuple[torch.Tensor, PatchAttention | None]:
        """[len(items), h, w, D] patch embeddings, computed for images not seen yet and
        reused otherwise; and the pass's ``PatchAttention`` where every image in it is
        shared by several items of the call (else None: the encoder computes it per item)."""
        keys = sharing_keys(items)
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
