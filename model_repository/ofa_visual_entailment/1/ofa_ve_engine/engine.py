"""The visual-entailment engine: ModelScope-faithful preprocessing and batched scoring.

``VisualEntailmentEngine.from_model_dir`` loads a ModelScope model directory
(all the I/O, weight loading, BatchNorm folding, backend choice and
compilation); the constructor only assembles parts already in memory, so tests
and tools can build one around any network. ``prepare`` does the per-item CPU
work (decode, resize, prompt, BPE) and raises ``InvalidInputError`` for that
item alone; ``predict`` runs any number of prepared items through the network
in forward passes of at most ``forward_batch_size`` (one encoder and one
decoder pass each) and returns the full probability distribution in
``LABELS`` order. It is the one owner of batching: a server hands it every
item it has and learns about each pass through ``on_pass``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import cpu_features, gpu_image
from .batching import Batch, PreparedItem, collate
from .checkpoint import load_model
from .compilation import compile_image_stem
from .errors import CheckpointError, InvalidInputError
from .image import image_bytes, load_pixels, resize_image
from .labels import ANSWERS, LABELS
from .limits import InputLimits
from .modeling import OFAModel
from .onednn import Linear, choose_linear_backend
from .onednn_stem import OneDNNStem, choose_stem_backend
from .resnet import fold_batchnorm
from .scoring import AnswerScorer
from .settings import TaskSettings
from .stem import ImageEmbeddings, StemCache, image_key
from .text import build_prompt
from .tokenizer import OFATokenizer

log = logging.getLogger(__name__)

DEFAULT_CPU_IMAGE_CHUNK = 2
"""Images per ResNet pass on CPU when not configured (docs/benchmarks.md has the sweep)."""
DEFAULT_FORWARD_BATCH_SIZE = 32
"""Items per forward pass when the caller does not say (Triton's max_batch_size)."""
AUTO_CPU_FORWARD_BATCH_SIZE = 1
"""``forward_batch_size=None`` on CPU: one item per pass is the least CPU per item
(the stem's activations fall out of cache as the pass grows; docs/benchmarks.md)."""
COMPILE_MAX_FIXED_SIZES = 8
"""Largest image chunk compiled as fixed shapes (one graph per size); beyond, dynamic."""

IMAGE_PATHS = ("exact", "fast", "gpu")
"""How ``prepare`` turns image bytes into pixels (config parameter ``image_path``)."""

HYPOTHESIS = "HYPOTHESIS"
PREMISE = "PREMISE"

PassCallback = Callable[[Sequence[PreparedItem], float], None]
"""``on_pass(items_in_pass, seconds)``: called by ``predict`` after each forward pass."""
InvalidCallback = Callable[[int, InvalidInputError], None]
"""``on_invalid(index, error)``: an item whose image turned out unreadable in its pass."""


@dataclass(frozen=True)
class EngineStats:
    """What the engine counted since the last ``take_stats`` (the server's metrics)."""

    stem_cache_hits: int = 0
    stem_cache_misses: int = 0
    image_path_fallbacks: dict[str, int] = field(default_factory=dict)
    """Eligible JPEGs of the GPU image path that took the CPU route, by reason."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the first GPU where there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {resolved} requested but CUDA is not available")
    return resolved


def _text(value: str | bytes | None, name: str, limits: InputLimits) -> str:
    """Validate one text input; bytes must be UTF-8 (Triton delivers bytes)."""
    if isinstance(value, bytes):
        if len(value) > limits.max_text_bytes:
            raise InvalidInputError(
                name, f"is {len(value)} bytes, over the limit of {limits.max_text_bytes} bytes"
            )
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInputError(
                name, f"is not valid UTF-8 ({e.reason} at byte {e.start})"
            ) from None
    if not isinstance(value, str):
        raise InvalidInputError(name, f"must be a string, not {type(value).__name__}")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > limits.max_text_bytes:
        raise InvalidInputError(
            name, f"is {size} bytes, over the limit of {limits.max_text_bytes} bytes"
        )
    if "\x00" in value:
        raise InvalidInputError(name, "contains NUL characters")
    return value


class VisualEntailmentEngine:
    """OFA visual entailment: ``prepare`` items one by one, ``predict`` them in batches."""

    def __init__(
        self,
        settings: TaskSettings,
        tokenizer: OFATokenizer,
        model: OFAModel,
        *,
        limits: InputLimits | None = None,
        forward_batch_size: int | None = DEFAULT_FORWARD_BATCH_SIZE,
        image_chunk_size: int | None = None,
        channels_last: bool = True,
        image_path: str = "exact",
        stem_cache_items: int = 0,
        model_dir: Path | None = None,
    ) -> None:
        """Assemble an engine from parts already in memory: no file I/O, no timing.

        ``model`` must already be on its device, in its dtype, in eval mode (what
        ``from_model_dir`` prepares); the engine reads ``device`` and ``dtype`` from
        it. ``forward_batch_size`` caps the items per forward pass; ``None`` is the
        automatic choice (1 on CPU, no cap on a GPU: every ``predict`` call is one
        pass). This and ``image_chunk_size`` below are the engine's one CPU/GPU rule.
        ``image_chunk_size`` runs the ResNet stem over at most this many images at a
        time while the transformer sees the whole pass (``None``: 2 on CPU, where
        the stem's activations fall out of cache as the batch grows; the whole pass
        on GPUs). ``channels_last`` sends the pixel batch NHWC (as the uint8 pixels
        already are, and what oneDNN and tensor-core convolutions run natively).
        ``image_path``: ``exact`` (bit-identical to the reference), ``fast`` (large
        JPEGs downscaled in the DCT domain first) or ``gpu`` (JPEGs decoded with
        nvJPEG and resized on the GPU; on a CPU engine this is ``exact``).
        ``stem_cache_items``: how many images' embeddings (stem output, projected)
        to keep across calls (0: none); items with the same image always share one
        stem pass within a call (``stem.py``). ``model_dir`` only names the source
        in messages. The engine keeps these choices itself (the model carries only
        its weights, linear backend and stem backend or compiled stem), so engines
        with different options may share one model.
        """
        self._check_sizes(forward_batch_size, image_chunk_size)
        if image_path not in IMAGE_PATHS:
            raise ValueError(f"image_path must be one of {list(IMAGE_PATHS)}, got {image_path!r}")
        source = f"{model_dir}: " if model_dir is not None else ""
        if len(tokenizer) != model.arch.vocab_size:
            raise CheckpointError(
                f"{source}the tokenizer has {len(tokenizer)} tokens (vocab.json plus 9192 "
                f"added) but config.json says vocab_size {model.arch.vocab_size}"
            )
        answers = settings.answers
        if sorted(answers) != sorted(ANSWERS):
            raise CheckpointError(
                f"{source}answers {answers} are not OFA's visual-entailment answers "
                f"{sorted(ANSWERS)}"
            )
        weight = next(model.parameters())
        self.settings = settings
        self.tokenizer = tokenizer
        self.model = model
        self.model_dir = model_dir
        self.device: torch.device = weight.device
        self.dtype: torch.dtype = weight.dtype
        self.limits = limits or InputLimits()
        if forward_batch_size is None and self.device.type == "cpu":
            forward_batch_size = AUTO_CPU_FORWARD_BATCH_SIZE
        self.forward_batch_size = forward_batch_size
        """At most this many items per forward pass; None: each predict call is one pass."""
        self.channels_last = channels_last
        on_cpu = self.device.type == "cpu"
        self.image_path = "exact" if image_path == "gpu" and on_cpu else image_path
        """The image path in effect (``gpu`` asked of a CPU engine is ``exact``)."""
        if image_chunk_size is None and self.device.type == "cpu":
            image_chunk_size = DEFAULT_CPU_IMAGE_CHUNK
        self.image_chunk_size = image_chunk_size
        """At most this many images per ResNet pass; None: the whole forward pass."""
        self.attend_by_length = self.device.type == "cpu"
        """Self-attention item by item over real lengths (see ``OFAEncoder.forward``)."""
        # Column j of the scorer's output is answers[j]; this reorders into LABELS order.
        self._label_columns = [answers.index(a) for a in ANSWERS]
        self.scorer = AnswerScorer(
            [tokenizer.encode(" " + a) for a in answers],
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
        )
        self.stem_cache = StemCache(stem_cache_items)
        """Stem outputs kept across calls, by image digest (capacity 0: off)."""
        self._gpu_decoder: gpu_image.GpuImageDecoder | None = None
        self._stem_counted = (0, 0)
        self._lock = threading.Lock()

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        limits: InputLimits | None = None,
        forward_batch_size: int | None = DEFAULT_FORWARD_BATCH_SIZE,
        image_chunk_size: int | None = None,
        compile: bool = False,
        linear_backend: str = "auto",
        stem_backend: str = "auto",
        image_path: str = "exact",
        stem_cache_items: int = 0,
        check_cpu_dtype: bool = True,
    ) -> VisualEntailmentEngine:
        """Load a ModelScope model directory onto ``device`` (None: a GPU if there is one).

        Reads the settings, tokenizer and weights (strictly, ``weights_only``), folds
        BatchNorm into the stem's convolutions, moves the network to ``device`` and
        ``dtype``, picks the library behind linear layers (``linear_backend``:
        ``auto``, ``onednn``, ``aten``; see ``onednn.py``) and the one behind the
        ResNet stem (``stem_backend``, the same three: oneDNN's fused convolutions on
        CPU; see ``onednn_stem.py``) and, with ``compile``, compiles the ResNet stem
        for every batch size it will see instead (seconds; on CPU it needs a C++
        compiler; see ``compilation.py``). Results stay within float
        rounding of the plain eager path whatever the options. Every problem with
        the directory is a CheckpointError naming the file. On a CPU, a reduced
        ``dtype`` the CPU has no native kernels for is refused (ValueError, see
        ``cpu_features.py``) unless ``check_cpu_dtype`` is off (measurement tools).
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise CheckpointError(f"model directory {model_dir} does not exist")
        cls._check_sizes(forward_batch_size, image_chunk_size)  # before seconds of loading
        settings = TaskSettings.from_model_dir(model_dir)
        tokenizer = OFATokenizer(model_dir)
        resolved = resolve_device(device)
        if check_cpu_dtype and resolved.type == "cpu":
            cpu_features.check_cpu_dtype(dtype)  # before seconds of loading
        model = load_model(model_dir)
        fold_batchnorm(model.encoder.embed_images)
        model = model.to(device=resolved, dtype=dtype).eval().requires_grad_(False)
        model.encoder.embed_images.to(memory_format=torch.channels_last)
        choose_linear_backend(model, resolved, dtype, linear_backend)
        model.encoder.image_stem = choose_stem_backend(  # compile replaces it below
            model.encoder.embed_images,
            resolved,
            dtype,
            settings.patch_image_size,
            "aten" if compile else stem_backend,
        )
        engine = cls(
            settings,
            tokenizer,
            model,
            limits=limits,
            forward_batch_size=forward_batch_size,
            image_chunk_size=image_chunk_size,
            channels_last=True,
            image_path=image_path,
            stem_cache_items=stem_cache_items,
            model_dir=model_dir,
        )
        if compile:  # last: a bad checkpoint fails before seconds of compilation
            engine._compile_image_stem()
        return engine

    @staticmethod
    def _check_sizes(forward_batch_size: int | None, image_chunk_size: int | None) -> None:
        """ValueError naming the argument for sizes the engine cannot use."""
        if forward_batch_size is not None and forward_batch_size < 1:
            raise ValueError(
                f"forward_batch_size must be a positive int or None (automatic), "
                f"got {forward_batch_size}"
            )
        if image_chunk_size is not None and image_chunk_size < 1:
            raise ValueError(
                f"image_chunk_size must be a positive int or None (automatic), "
                f"got {image_chunk_size}"
            )

    def _compile_image_stem(self) -> None:
        """Compile the ResNet stem for every batch size it will see (see compilation.py)."""
        size = self.settings.patch_image_size
        largest = self.forward_batch_size or DEFAULT_FORWARD_BATCH_SIZE
        chunk = min(self.image_chunk_size or largest, largest)
        fixed = chunk <= COMPILE_MAX_FIXED_SIZES
        self.model.encoder.image_stem = compile_image_stem(
            self.model.encoder.embed_images,
            example=torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype),
            # Up to a few sizes: one graph per size 1..chunk. Beyond: a dynamic graph.
            batch_sizes=range(1, chunk + 1) if fixed else (1, 2),
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
            dynamic=False if fixed else None,
        )

    @property
    def is_demo(self) -> bool:
        """True for random-weight demo checkpoints (``model.demo`` in configuration.json)."""
        return self.settings.demo

    @property
    def linear_backend(self) -> str:
        """``onednn`` or ``aten``: the library behind the network's linear layers."""
        onednn = any(isinstance(m, Linear) and m.onednn for m in self.model.modules())
        return "onednn" if onednn else "aten"

    @property
    def stem_backend(self) -> str:
        """What runs the ResNet stem: ``onednn`` (fused convolutions, ``onednn_stem.py``),
        ``inductor`` (``compile=True``) or ``aten`` (the eager modules)."""
        stem = self.model.encoder.image_stem
        if stem is None:
            return "aten"
        return "onednn" if isinstance(stem, OneDNNStem) else "inductor"

    @property
    def compiled(self) -> bool:
        """Whether the ResNet stem runs a compiled copy (``compile=True``)."""
        return self.stem_backend == "inductor"

    def prepare(
        self,
        image: bytes | Image.Image,
        hypothesis: str | bytes,
        premise: str | bytes | None = None,
        *,
        like: PreparedItem | None = None,
    ) -> PreparedItem:
        """CPU preprocessing of one item; raises InvalidInputError naming the bad input.

        ``like``: an item prepared earlier; if its image has the same bytes, its pixels
        are reused instead of decoding again (many hypotheses about one image).
        """
        hypothesis = _text(hypothesis, HYPOTHESIS, self.limits)
        if not hypothesis.strip():
            raise InvalidInputError(HYPOTHESIS, "is empty")
        if premise is not None:
            premise = _text(premise, PREMISE, self.limits)
            if not premise.strip():
                premise = None  # absent or empty means the image alone
        size = self.settings.patch_image_size
        encoded = key = None
        if isinstance(image, Image.Image):  # as the reference: no EXIF step for PIL input
            pixels = resize_image(image.convert("RGB"), size)
        elif isinstance(image, bytes | bytearray | memoryview):
            data = image_bytes(bytes(image), self.limits)  # the file a data URL carries
            key = image_key(data)
            if like is not None and like.image_key == key:
                pixels, encoded = like.pixels, like.encoded
            elif self.image_path == "gpu" and gpu_image.device_eligible(data, self.limits):
                pixels, encoded = None, data  # decoded with its batch, on the device
            else:
                pixels = load_pixels(data, size, self.limits, fast=self.image_path == "fast")
        else:
            raise InvalidInputError("IMAGE", f"must be encoded bytes, not {type(image).__name__}")

        s = self.settings
        prompt = build_prompt(hypothesis, premise, s.max_src_length, s.prompt)
        ids = (
            self.tokenizer.bos_id,
            *self.tokenizer.encode(prompt, s.max_src_length),
            self.tokenizer.eos_id,
        )
        decoder_prompt = ids[:-1] if s.prompt_type == "prev_output" else (self.tokenizer.bos_id,)
        return PreparedItem(
            pixels=pixels,
            input_ids=ids,
            decoder_prompt=decoder_prompt,
            encoded=encoded,
            image_key=key,
        )

    def predict(
        self,
        items: Sequence[PreparedItem],
        *,
        on_pass: PassCallback | None = None,
        wanted: Callable[[int], bool] | None = None,
        on_invalid: InvalidCallback | None = None,
    ) -> np.ndarray:
        """[N, 3] float32 probabilities in LABELS order.

        Args:
            items: prepared items, run in forward passes of at most ``forward_batch_size``.
            on_pass: ``on_pass(items_in_pass, seconds)`` after each pass, outside the lock.
            wanted: ``wanted(i)`` is asked before each pass for each of its items; an item
                no longer wanted (its client has gone) is left out, and its row is NaN.
            on_invalid: where an image kept encoded for the GPU image path turns out
                unreadable in its pass, ``on_invalid(i, error)`` is told and its row is
                NaN; without it, the error is raised.
        """
        out = np.full((len(items), len(LABELS)), np.nan, dtype=np.float32)
        size = self.forward_batch_size or max(1, len(items))
        unreadable: dict[object, InvalidInputError] = {}
        images = ImageEmbeddings(
            items,
            lambda chunk: self._embed_images(chunk, unreadable),
            self.stem_cache,
            self.model.encoder.patch_attention,
        )
        for start in range(0, len(items), size):
            indices = range(start, min(start + size, len(items)))
            if wanted is not None:
                indices = [i for i in indices if wanted(i)]
                if not indices:
                    continue
            chunk = [items[i] for i in indices]
            with self._lock:  # one forward at a time per engine (and its stem cache)
                started = time.perf_counter()
                out[list(indices)] = self._forward(chunk, images)
                seconds = time.perf_counter() - started
            for i in indices if unreadable else ():
                error = unreadable.get(items[i].image_key)
                if error is not None:
                    if on_invalid is None:
                        raise error
                    out[i] = np.nan
                    on_invalid(i, error)
            if on_pass is not None:
                on_pass(chunk, seconds)
        return out

    @property
    def gpu_image_decoder(self) -> gpu_image.GpuImageDecoder | None:
        """The GPU image path's decoder once a pass has used it (None before, or never)."""
        return self._gpu_decoder

    def take_stats(self) -> EngineStats:
        """Counts since the last call: stem-cache lookups, GPU image path fallbacks."""
        hits, misses = self.stem_cache.hits, self.stem_cache.misses
        before = self._stem_counted
        self._stem_counted = (hits, misses)
        decoder = self._gpu_decoder
        return EngineStats(
            stem_cache_hits=hits - before[0],
            stem_cache_misses=misses - before[1],
            image_path_fallbacks=decoder.take_fallbacks() if decoder is not None else {},
        )

    def collate(
        self,
        items: Sequence[PreparedItem],
        *,
        channels_last: bool | None = None,
        with_images: bool = True,
        unreadable: dict[object, InvalidInputError] | None = None,
    ) -> Batch:
        """The padded batch of ``items`` on the engine's device, as a forward pass gets it
        (JPEGs kept encoded for the GPU image path are decoded there first; one no route
        can read gets zero pixels and its error in ``unreadable`` by image key, or raises
        without it)."""
        pixels = None
        if with_images and any(item.pixels is None for item in items):  # GPU image path
            pixels = self._device_pixels(items, unreadable)
        return collate(
            items,
            pad_id=self.tokenizer.pad_id,
            device=self.device,
            dtype=self.dtype,
            mean=self.settings.mean,
            std=self.settings.std,
            channels_last=self.channels_last if channels_last is None else channels_last,
            pixels=pixels,
            with_images=with_images,
        )

    def _embed_images(
        self, items: Sequence[PreparedItem], unreadable: dict[object, InvalidInputError]
    ) -> torch.Tensor:
        """The ResNet stem and patch projection over ``items``' images: [len(items), h, w, D]."""
        encoder = self.model.encoder
        images = self.collate(items, unreadable=unreadable).images
        return encoder.embed_image(encoder.image_features(images, self.image_chunk_size))

    @torch.inference_mode()
    def _forward(self, items: Sequence[PreparedItem], images: ImageEmbeddings) -> np.ndarray:
        """One forward pass: [len(items), 3] float32 in LABELS order, on the host; the
        stem runs once per distinct image of the ``predict`` call (``images``)."""
        batch = self.collate(items, with_images=False)
        image_embeds, patches = images.for_pass(items)
        encoded = self.model.encoder(
            batch.input_ids,
            image_embeds=image_embeds,
            patches=patches,
            image_chunk_size=self.image_chunk_size,
            attend_by_length=self.attend_by_length,
        )
        probs = self.scorer.score(self.model, encoded, batch.decoder_prompts, batch.prompt_lengths)
        return probs[:, self._label_columns].float().cpu().numpy()

    def _device_pixels(
        self,
        items: Sequence[PreparedItem],
        unreadable: dict[object, InvalidInputError] | None = None,
    ) -> torch.Tensor:
        """The pass's [B, P, P, 3] uint8 pixels on the device: JPEGs kept encoded by
        ``prepare`` are decoded there in batched calls, the others copied over."""
        size = self.settings.patch_image_size
        if self._gpu_decoder is None:
            self._gpu_decoder = gpu_image.GpuImageDecoder(size, self.limits, self.device)
        out = torch.empty((len(items), size, size, 3), dtype=torch.uint8, device=self.device)
        encoded = [i for i, item in enumerate(items) if item.pixels is None]
        decoded, errors = self._gpu_decoder.load([items[i].encoded for i in encoded])
        if errors and unreadable is None:
            raise errors[min(errors)]
        for position, error in errors.items():
            unreadable[items[encoded[position]].image_key] = error
        out[torch.tensor(encoded, device=self.device)] = decoded
        for i, item in enumerate(items):
            if item.pixels is not None:
                out[i] = torch.as_tensor(np.array(item.pixels), device=self.device)  # writable
        return out

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run real inferences (an encoded image through the whole path) before serving: a
        JPEG on the GPU image path (nvJPEG's first call is costly), else a PNG."""
        buffer = io.BytesIO()
        image_format = "JPEG" if self.image_path == "gpu" else "PNG"
        Image.new("RGB", (64, 48), (120, 160, 200)).save(buffer, format=image_format)
        item = self.prepare(buffer.getvalue(), "a warm-up sentence.", "a premise.")
        for size in batch_sizes:
            self.predict([item] * max(1, size))
