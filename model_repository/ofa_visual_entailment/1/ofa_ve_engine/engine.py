"""The visual-entailment engine: ModelScope-faithful preprocessing and batched scoring.

``prepare`` does the per-item CPU work (decode, resize, prompt, BPE) and raises
``InvalidInputError`` for that item alone; ``predict`` runs any number of
prepared items through the network in batches of at most ``max_batch_size``
(one encoder pass and one decoder pass per batch) and returns the full
probability distribution in ``LABELS`` order.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .batching import PreparedItem, collate
from .checkpoint import load_model
from .compilation import compile_image_stem
from .errors import CheckpointError, InvalidInputError
from .image import decode_image, resize_image
from .labels import ANSWER_TO_LABEL, LABELS
from .limits import InputLimits
from .onednn import choose_linear_backend
from .resnet import fold_batchnorm
from .scoring import AnswerScorer
from .settings import TaskSettings
from .text import build_prompt
from .tokenizer import OFATokenizer

log = logging.getLogger(__name__)

DEFAULT_CPU_IMAGE_CHUNK = 2
"""Images per ResNet pass on CPU when not configured (docs/benchmarks.md has the sweep)."""
COMPILE_MAX_FIXED_SIZES = 8
"""Largest image chunk compiled as fixed shapes (one graph per size); beyond, dynamic."""

HYPOTHESIS = "HYPOTHESIS"
PREMISE = "PREMISE"


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
    """OFA visual entailment over a ModelScope model directory."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        limits: InputLimits | None = None,
        max_batch_size: int = 32,
        fold_bn: bool = True,
        channels_last: bool | None = None,
        image_chunk_size: int | None = None,
        compile: bool = False,
        linear_backend: str = "auto",
    ) -> None:
        """Load a ModelScope model directory onto ``device``.

        Performance options (results stay within float rounding of the defaults):
        ``image_chunk_size`` runs the ResNet stem over at most this many images at a
        time while the transformer sees the whole batch (``None``: 2 on CPU, where
        the stem's activations fall out of cache as the batch grows; 0, the whole
        batch, on GPUs). ``compile`` compiles the stem with ``torch.compile`` now
        (seconds; on CPU it needs a C++ compiler), see ``compilation.py``.
        ``linear_backend`` (``auto``, ``onednn``, ``aten``) picks the library behind
        linear layers on CPU in float32, see ``onednn.py``.
        """
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise CheckpointError(f"model directory {self.model_dir} does not exist")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if image_chunk_size is not None and image_chunk_size < 0:
            raise ValueError("image_chunk_size must be 0 (whole batch) or positive")
        self.settings = TaskSettings.from_model_dir(self.model_dir)
        self.tokenizer = OFATokenizer(self.model_dir)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.limits = limits or InputLimits()
        self.max_batch_size = max_batch_size
        # NHWC is what oneDNN (CPU) and tensor-core convolutions (GPU) run natively, and
        # what the uint8 HWC pixels already are, so the batch needs no relayout.
        self.channels_last = True if channels_last is None else channels_last

        model = load_model(self.model_dir)
        if len(self.tokenizer) != model.arch.vocab_size:
            raise CheckpointError(
                f"{self.model_dir}: the tokenizer has {len(self.tokenizer)} tokens (vocab.json "
                f"plus 9192 added) but config.json says vocab_size {model.arch.vocab_size}"
            )
        if fold_bn:
            fold_batchnorm(model.encoder.embed_images)
        model = model.to(device=self.device, dtype=dtype)
        if self.channels_last:
            model.encoder.embed_images.to(memory_format=torch.channels_last)
        self.model = model.eval().requires_grad_(False)
        self.linear_backend = choose_linear_backend(self.model, self.device, dtype, linear_backend)
        if image_chunk_size is None:
            image_chunk_size = DEFAULT_CPU_IMAGE_CHUNK if self.device.type == "cpu" else 0
        self.image_chunk_size = image_chunk_size
        self.model.encoder.image_chunk_size = image_chunk_size
        self.model.encoder.attend_by_length = self.device.type == "cpu"

        answers = self.settings.answers
        unknown = [a for a in answers if a not in ANSWER_TO_LABEL]
        if unknown or sorted(answers) != sorted(ANSWER_TO_LABEL):
            raise CheckpointError(
                f"{self.model_dir}: answers {answers} are not OFA's visual-entailment answers "
                f"{sorted(ANSWER_TO_LABEL)}"
            )
        self.answers = answers
        # Column j of the scorer's output is answers[j]; this reorders into LABELS order.
        self._label_columns = [answers.index(a) for a in ("yes", "maybe", "no")]
        self.scorer = AnswerScorer(
            [self.tokenizer.encode(" " + a) for a in answers],
            bos_id=self.tokenizer.bos_id,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            vocab_size=model.arch.vocab_size,
        )
        self._lock = threading.Lock()
        self.compiled = compile
        if compile:  # last: a bad checkpoint fails before seconds of compilation
            self._compile_image_stem()

    def _compile_image_stem(self) -> None:
        """Compile the ResNet stem for every batch size it will see (see compilation.py)."""
        size = self.settings.patch_image_size
        chunk = self.image_chunk_size
        fixed = 0 < chunk <= COMPILE_MAX_FIXED_SIZES
        self.model.encoder.image_stem = compile_image_stem(
            self.model.encoder.embed_images,
            example=torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype),
            # A fixed chunk: one graph per size 1..chunk. Whole batches: a dynamic graph.
            batch_sizes=range(1, chunk + 1) if fixed else (1, 2),
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
            dynamic=False if fixed else None,
        )

    from_model_dir = classmethod(lambda cls, model_dir, **kw: cls(model_dir, **kw))

    @property
    def is_demo(self) -> bool:
        """True for random-weight demo checkpoints (``model.demo`` in configuration.json)."""
        return self.settings.demo

    def prepare(
        self,
        image: bytes | Image.Image,
        hypothesis: str | bytes,
        premise: str | bytes | None = None,
    ) -> PreparedItem:
        """CPU preprocessing of one item; raises InvalidInputError naming the bad input."""
        hypothesis = _text(hypothesis, HYPOTHESIS, self.limits)
        if not hypothesis.strip():
            raise InvalidInputError(HYPOTHESIS, "is empty")
        if premise is not None:
            premise = _text(premise, PREMISE, self.limits)
            if not premise.strip():
                premise = None  # absent or empty means the image alone
        if isinstance(image, Image.Image):
            rgb = image.convert("RGB")  # as the reference: no EXIF step for PIL input
        elif isinstance(image, bytes | bytearray | memoryview):
            rgb = decode_image(bytes(image), self.limits)
        else:
            raise InvalidInputError("IMAGE", f"must be encoded bytes, not {type(image).__name__}")
        pixels = resize_image(rgb, self.settings.patch_image_size)

        s = self.settings
        prompt = build_prompt(hypothesis, premise, s.max_src_length, s.prompt)
        ids = (
            self.tokenizer.bos_id,
            *self.tokenizer.encode(prompt, s.max_src_length),
            self.tokenizer.eos_id,
        )
        decoder_prompt = ids[:-1] if s.prompt_type == "prev_output" else (self.tokenizer.bos_id,)
        return PreparedItem(pixels=pixels, input_ids=ids, decoder_prompt=decoder_prompt)

    @torch.inference_mode()
    def predict(self, items: Sequence[PreparedItem], *, force_general: bool = False) -> np.ndarray:
        """[N, 3] float32 probabilities in LABELS order, computed max_batch_size at a time."""
        if not items:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        out = []
        with self._lock:  # one forward at a time per engine; callers batch instead
            for start in range(0, len(items), self.max_batch_size):
                chunk = items[start : start + self.max_batch_size]
                batch = collate(
                    chunk,
                    pad_id=self.tokenizer.pad_id,
                    device=self.device,
                    dtype=self.dtype,
                    mean=self.settings.mean,
                    std=self.settings.std,
                    channels_last=self.channels_last,
                )
                encoded = self.model.encoder(batch.input_ids, batch.images)
                probs = self.scorer.score(
                    self.model,
                    encoded,
                    batch.decoder_prompts,
                    batch.prompt_lengths,
                    force_general=force_general,
                )
                out.append(probs[:, self._label_columns].float().cpu())
        return torch.cat(out).numpy()

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run real inferences (encoded PNG through the whole path) before serving."""
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 160, 200)).save(buffer, format="PNG")
        item = self.prepare(buffer.getvalue(), "a warm-up sentence.", "a premise.")
        for size in batch_sizes:
            self.predict([item] * max(1, size))
