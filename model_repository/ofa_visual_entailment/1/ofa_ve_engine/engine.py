"""The visual-entailment engine: ModelScope-faithful preprocessing and batched scoring.

``VisualEntailmentEngine.from_model_dir`` loads a ModelScope model directory
(all the I/O, weight loading, BatchNorm folding, backend choice and
compilation); the constructor only assembles parts already in memory, so tests
and tools can build one around any network. ``prepare`` does the per-item CPU
work (decode, resize, prompt, BPE) and raises ``InvalidInputError`` for that
item alone; ``predict`` runs any number of prepared items through the network
in forward passes of at most ``forward_batch_size`` (one encoder and one
decoder pass each) and returns the full probability distribution in
``LABELS`` order. It is the one owner of forward passes: a server hands it
every item it has, learns about each pass through ``on_pass``, and says at each
pass boundary which items still run (``keep``).
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

from . import cpu_features, gpu_image, image_sharing
from .batching import Batch, PreparedItem, collate
from .checkpoint import load_model
from .compilation import compile_stem
from .errors import CheckpointError, InvalidInputError
from .image import image_bytes, load_pixels, resize_image
from .image_sharing import PatchEmbeddingCache, PatchEmbeddings
from .labels import ANSWERS, LABELS
from .limits import InputLimits
from .modeling import OFAModel
from .onednn import Linear, choose_linear_backend
from .onednn_stem import OneDNNGraphStem, OneDNNStem, choose_stem_backend
from .quantization import Int8Stem, calibration_photos, check_quantization, quantize_stem
from .resnet import fold_batchnorm
from .scoring import AnswerScorer
from .settings import TaskSettings
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
AUTO_AMX_FORWARD_BATCH_SIZE = 4
"""``forward_batch_size=None`` on a CPU whose AMX tiles run the network's reduced type
(bfloat16, or the int8 stem): a pass of a few items beats one at a time there
(docs/benchmarks.md)."""

COMPILE_MAX_FIXED_SIZES = 8
"""Largest image chunk compiled as fixed shapes (one graph per size); beyond, dynamic."""

IMAGE_PATHS = ("exact", "fast", "gpu")
"""How ``prepare`` turns image bytes into pixels (config parameter ``image_path``)."""


def auto_forward_batch_size(
    device: torch.device,
    dtype: torch.dtype,
    quantization: str = "none",
    flags: frozenset[str] | None = None,
) -> int | None:
    """What ``forward_batch_size=None`` means: no cap on a GPU; on CPU 1, or
    ``AUTO_AMX_FORWARD_BATCH_SIZE`` where AMX runs bfloat16 or the int8 stem (``flags``:
    the CPU's, for tests)."""
    if device.type != "cpu":
        return None
    kind = "int8" if quantization == "int8" else "bf16" if dtype == torch.bfloat16 else None
    if kind is not None and cpu_features.has_amx(kind, flags):
        return AUTO_AMX_FORWARD_BATCH_SIZE
    return AUTO_CPU_FORWARD_BATCH_SIZE


HYPOTHESIS = "HYPOTHESIS"
PREMISE = "PREMISE"

PassCallback = Callable[[Sequence[PreparedItem], float], None]
"""``on_pass(items_in_pass, seconds)``: called by ``predict`` after each forward pass."""
KeepCallback = Callable[[list[int]], list[int]]
"""``keep(indices) -> indices``: before each forward pass, which of its items still run."""
InvalidCallback = Callable[[int, InvalidInputError], None]
"""``on_invalid(index, error)``: an item whose image turned out unreadable in its pass."""


@dataclass(frozen=True)
class EngineStats:
    """What the engine counted since the last ``take_stats`` (the server's metrics)."""

    patch_cache_hits: int = 0
    patch_cache_misses: int = 0
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

        The engine keeps its options itself (the model carries only its weights and
        backends), so engines with different options may share one model.

        Args:
            settings, tokenizer: the model directory's, as ``from_model_dir`` reads them.
            model: on its device, in its dtype, in eval mode; the engine takes its
                ``device`` and ``dtype`` from it.
            limits: per-item input limits (default ``InputLimits()``).
            forward_batch_size: most items per forward pass; None: see
                ``auto_forward_batch_size`` (no cap on a GPU: every ``predict`` call one pass).
            image_chunk_size: most images per stem run within a pass; None: 2 on CPU
                (its activations fall out of cache as the chunk grows), the whole
                pass on a GPU.
            channels_last: send pixels NHWC, as they are decoded and as oneDNN and
                tensor cores run convolutions.
            image_path: ``exact`` (bit-identical to the reference), ``fast`` (large
                JPEGs downscaled in the DCT domain) or ``gpu`` (nvJPEG; ``exact`` on
                a CPU engine).
            stem_cache_items: images whose patch embeddings are kept across calls
                (``image_sharing.PatchEmbeddingCache``; 0: none).
            model_dir: only names the source in messages.
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
        self._auto_forward_batch_size = forward_batch_size is None
        """Whether the size is ``auto``'s, to be chosen again if the stem becomes int8."""
        if forward_batch_size is None:
            forward_batch_size = auto_forward_batch_size(self.device, self.dtype)
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
        self.patch_cache = PatchEmbeddingCache(stem_cache_items)
        """Patch embeddings kept across calls, by image digest (capacity 0: off)."""
        self._gpu_decoder: gpu_image.GpuImageDecoder | None = None
        self._patch_cache_counted = (0, 0)
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
        quantization: str = "none",
        image_path: str = "exact",
        stem_cache_items: int = 0,
        check_cpu_dtype: bool = True,
    ) -> VisualEntailmentEngine:
        """Load a ModelScope model directory: settings, tokenizer, weights (strictly,
        ``weights_only``), BatchNorm folded into the stem, backends chosen.

        Every problem with the directory is a CheckpointError naming the file; the
        options change speed only (results stay within float rounding).

        Args:
            device: None: a GPU if there is one, else the CPU.
            dtype: a reduced dtype the CPU has no native kernels for is refused
                (ValueError, ``cpu_features.py``) unless ``check_cpu_dtype`` is off
                (measurement tools); so is int8 on a CPU without int8 kernels.
            compile: compile the stem with inductor for every batch size it will see
                (seconds; a C++ compiler on CPU; ``compilation.py``).
            linear_backend, stem_backend: ``auto``, ``onednn`` or ``aten`` (the stem also
                ``onednn_graph``): what runs the linear layers (``onednn.py``) and the
                stem (``onednn_stem.py``).
            quantization: ``none`` or ``int8`` (the stem in int8, calibrated here on the
                shipped photos: ``quantization.py``; CPU and float32 only, ValueError
                elsewhere, before loading).
            The others: as in the constructor.
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
        check_quantization(  # before seconds of loading too
            quantization, resolved, dtype, compile=compile, check_cpu=check_cpu_dtype
        )
        model = load_model(model_dir)
        fold_batchnorm(model.encoder.stem)
        model = model.to(device=resolved, dtype=dtype).eval().requires_grad_(False)
        model.encoder.stem.to(memory_format=torch.channels_last)
        choose_linear_backend(model, resolved, dtype, linear_backend)
        model.encoder.stem_runner = choose_stem_backend(  # compile or int8 replace it below
            model.encoder.stem,
            resolved,
            dtype,
            settings.patch_image_size,
            "aten" if compile or quantization != "none" else stem_backend,
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
            engine._compile_stem()
        if quantization == "int8":
            engine._quantize_stem()
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

    def _compile_stem(self) -> None:
        """Compile the stem for every batch size it will see (see compilation.py)."""
        size = self.settings.patch_image_size
        largest = self.forward_batch_size or DEFAULT_FORWARD_BATCH_SIZE
        chunk = min(self.image_chunk_size or largest, largest)
        fixed = chunk <= COMPILE_MAX_FIXED_SIZES
        self.model.encoder.stem_runner = compile_stem(
            self.model.encoder.stem,
            example=torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype),
            # Up to a few sizes: one graph per size 1..chunk. Beyond: a dynamic graph.
            batch_sizes=range(1, chunk + 1) if fixed else (1, 2),
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
            dynamic=False if fixed else None,
        )

    def _quantize_stem(self) -> None:
        """The stem in int8, calibrated on the shipped photos, prepared and normalised
        exactly as requests' images are (see quantization.py)."""
        try:
            items = [self.prepare(photo, "calibration") for photo in calibration_photos()]
        except InvalidInputError as e:
            raise ValueError(
                f"quantization int8: a calibration photo is over this model's input limits "
                f"({e}); raise max_image_bytes / max_image_pixels"
            ) from e
        images = self.collate(items).images
        self.model.encoder.stem_runner = quantize_stem(self.model.encoder.stem, images)
        if self._auto_forward_batch_size:
            self.forward_batch_size = auto_forward_batch_size(self.device, self.dtype, "int8")

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
        """What runs the ResNet stem: ``onednn_graph`` (the traced stem, oneDNN's graph
        compiler) or ``onednn`` (fused convolutions; both ``onednn_stem.py``), ``int8``
        (``quantization.py``), ``inductor`` (``compile=True``) or ``aten`` (the eager
        modules)."""
        runner = self.model.encoder.stem_runner
        if runner is None:
            return "aten"
        if isinstance(runner, Int8Stem):
            return "int8"
        if isinstance(runner, OneDNNGraphStem):
            return "onednn_graph"
        return "onednn" if isinstance(runner, OneDNNStem) else "inductor"

    @property
    def quantization(self) -> str:
        """``int8`` where the stem runs in int8 (``quantization="int8"``), else ``none``."""
        return "int8" if isinstance(self.model.encoder.stem_runner, Int8Stem) else "none"

    def describe_quantization(self) -> str:
        """``none``, or what runs in int8 and how it was checked (the start-up log)."""
        runner = self.model.encoder.stem_runner
        return runner.describe() if isinstance(runner, Int8Stem) else "none"

    @property
    def compiled(self) -> bool:
        """Whether the stem runs a compiled copy (``compile=True``)."""
        return self.stem_backend == "inductor"

    def prepare(
        self,
        image: bytes | Image.Image,
        hypothesis: str | bytes,
        premise: str | bytes | None = None,
        *,
        same_image_as: PreparedItem | None = None,
        image_digest: bytes | None = None,
        like: PreparedItem | None = None,
    ) -> PreparedItem:
        """CPU preprocessing of one item; raises InvalidInputError naming the bad input.

        Args:
            image: encoded bytes (or a PIL image, which shares with nothing).
            hypothesis, premise: UTF-8 bytes or str; an empty premise is none.
            same_image_as: an item prepared earlier; where its image digest is this
                image's, its pixels are reused instead of decoding again.
            image_digest: ``image_sharing.image_digest(image)`` where the caller has it
                already (computed here otherwise).
            like: the old name of ``same_image_as``, still accepted.
        """
        same_image_as = same_image_as or like
        hypothesis = _text(hypothesis, HYPOTHESIS, self.limits)
        if not hypothesis.strip():
            raise InvalidInputError(HYPOTHESIS, "is empty")
        if premise is not None:
            premise = _text(premise, PREMISE, self.limits)
            if not premise.strip():
                premise = None  # absent or empty means the image alone
        size = self.settings.patch_image_size
        encoded = digest = None
        if isinstance(image, Image.Image):  # as the reference: no EXIF step for PIL input
            pixels = resize_image(image.convert("RGB"), size)
        elif isinstance(image, bytes | bytearray | memoryview):
            digest = image_digest or image_sharing.image_digest(bytes(image))  # of the value sent
            if same_image_as is not None and same_image_as.image_digest == digest:
                pixels, encoded = same_image_as.pixels, same_image_as.encoded
            else:
                data = image_bytes(bytes(image), self.limits)  # the file a data URL carries
                if self.image_path == "gpu" and gpu_image.device_eligible(data, self.limits):
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
            image_digest=digest,
        )

    def predict(
        self,
        items: Sequence[PreparedItem],
        *,
        on_pass: PassCallback | None = None,
        keep: KeepCallback | None = None,
        on_invalid: InvalidCallback | None = None,
        wanted: Callable[[int], bool] | None = None,
    ) -> np.ndarray:
        """[N, 3] float32 probabilities in LABELS order.

        Args:
            items: prepared items, run in forward passes of at most ``forward_batch_size``.
            on_pass: ``on_pass(items_in_pass, seconds)`` after each pass, outside the lock.
            keep: ``keep(indices)`` before each pass, with its items' indices, returns
                those still to run (a server leaves out items whose client has gone);
                the rows of the others are NaN.
            on_invalid: where an image kept encoded for the GPU image path turns out
                unreadable in its pass, ``on_invalid(i, error)`` is told and its row is
                NaN; without it, the error is raised.
            wanted: the old per-item form of ``keep`` (``wanted(i) -> bool``), still
                accepted.
        """
        if keep is None and wanted is not None:
            keep = lambda indices: [i for i in indices if wanted(i)]  # noqa: E731
        out = np.full((len(items), len(LABELS)), np.nan, dtype=np.float32)
        size = self.forward_batch_size or max(1, len(items))
        unreadable: dict[object, InvalidInputError] = {}
        patch_embeds = PatchEmbeddings(
            items,
            lambda chunk: self._embed_patches(chunk, unreadable),
            self.patch_cache,
            self.model.encoder.patch_attention,
        )
        for start in range(0, len(items), size):
            indices = list(range(start, min(start + size, len(items))))
            if keep is not None:
                indices = keep(indices)
                if not indices:
                    continue
            chunk = [items[i] for i in indices]
            with self._lock:  # one forward at a time per engine (and its patch cache)
                started = time.perf_counter()
                out[indices] = self._forward(chunk, patch_embeds)
                seconds = time.perf_counter() - started
                for digest in unreadable:  # zero pixels' embeddings must not answer later
                    self.patch_cache.discard(digest)
            for i in indices if unreadable else ():
                error = unreadable.get(items[i].image_digest)
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
        """Counts since the last call: patch-cache lookups, GPU image path fallbacks."""
        hits, misses = self.patch_cache.hits, self.patch_cache.misses
        before = self._patch_cache_counted
        self._patch_cache_counted = (hits, misses)
        decoder = self._gpu_decoder
        return EngineStats(
            patch_cache_hits=hits - before[0],
            patch_cache_misses=misses - before[1],
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
        """The padded batch of ``items`` on the engine's device, as a forward pass gets it.

        Args:
            channels_last: the images' memory layout (None: the engine's).
            with_images: False for the text tensors only.
            unreadable: JPEGs kept encoded for the GPU image path are decoded here; one
                no route can read gets zero pixels and its error here, by image digest
                (None: raised).
        """
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

    def _embed_patches(
        self, items: Sequence[PreparedItem], unreadable: dict[object, InvalidInputError]
    ) -> torch.Tensor:
        """The patch embeddings of ``items``' images: [len(items), h, w, D]."""
        encoder = self.model.encoder
        images = self.collate(items, unreadable=unreadable).images
        return encoder.embed_patches(encoder.stem_features(images, self.image_chunk_size))

    @torch.inference_mode()
    def _forward(
        self, items: Sequence[PreparedItem], patch_embeds: PatchEmbeddings
    ) -> np.ndarray:
        """One forward pass: [len(items), 3] float32 in LABELS order, on the host; the
        patch embeddings come once per distinct image of the ``predict`` call."""
        batch = self.collate(items, with_images=False)
        embeds, patch_attention = patch_embeds.for_pass(items)
        encoded = self.model.encoder(
            batch.input_ids,
            patch_embeds=embeds,
            patch_attention=patch_attention,
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
            unreadable[items[encoded[position]].image_digest] = error
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
