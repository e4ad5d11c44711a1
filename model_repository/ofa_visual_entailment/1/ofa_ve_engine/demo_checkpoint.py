"""A random-weight OFA-tiny checkpoint in exactly ModelScope's model-directory layout.

Why: the real weights live only on the ModelScope hub. Wherever the hub cannot
be reached (this workplace, CI, air-gapped hosts) the server, the tests and the
benchmarks still need a model directory that every consumer reads exactly as it
would read `damo/ofa_visual-entailment_snli-ve_distilled_v2_en`: ModelScope's
own pipeline included. So this writes the same files with the same shapes:

- `configuration.json`  ModelScope task config (`model.type: ofa`, traverse scoring,
                        `prev_output` decoder prompt, answer file, 480 px patches)
- `config.json`         HF-style `OFAConfig` of OFA-tiny (d_model 256, 4+4 layers,
                        4 heads, FFN 1024, ResNet-50 stem, vocab_size 59457)
- `pytorch_model.bin`   state dict of our `OFAModel`, randomly initialised
- `vocab.json`, `merges.txt`  a small GPT-2 byte-level BPE laid out like BART's
                        (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3, bytes, merges,
                        filler, `<mask>`=50264), so that with OFA's 9192 added
                        tokens the id space is the real 59457
- `answer2label.json`   `{"no": 0, "yes": 1, "maybe": 2}` (OFA's order)

The BPE is small (about 1,900 merges over the prompt words and common
English) but real: ` yes`, ` no`, ` maybe` are single tokens as in the real
vocabulary, other text falls back to sub-word and byte tokens. Ids from the end
of the merges up to `<mask>` are unused filler that BPE never produces; they
exist so that ModelScope's answer-constraint masks (sized by the tokenizer)
match the network's 59457 output logits.

Everything is deterministic for a seed: the same seed gives byte-identical files.
`configuration.json` carries `model.demo: true` so the engine can announce loudly
that it serves random weights.

Random weights answer almost uniformly (top-1 margins around 0.01), which is
useless for precision and fidelity comparisons. `decisive=True` rewrites only
the three answer embeddings (`make_decisive`) so that answers are confident
(median margin above 0.5 on the test photos) and cover all three labels, and
records `model.decisive: true` next to `model.demo: true`.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path

import torch
from PIL import Image

from .settings import (
    CONFIG_FILE,
    CONFIGURATION_FILE,
    MERGES_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    OFAArchitecture,
)

ANSWER_FILE = "answer2label.json"
ANSWER2LABEL: dict[str, int] = {"no": 0, "yes": 1, "maybe": 2}
BPE_VOCAB_SIZE = 50265
"""BART's vocabulary size: ids 0..50264, `<mask>` last."""

DEFAULT_SEED = 4
"""The first seed whose random answers on the test images cover all three labels."""

# OFA-tiny as OFAConfig reads it (HF `config.json` of OFA-Sys/ofa-tiny, the shape the
# distilled SNLI-VE model shares). Keys and values follow OFAConfig's field names.
OFA_TINY_CONFIG: dict[str, object] = {
    "activation_dropout": 0.0,
    "activation_function": "gelu",
    "add_type_embedding": True,
    "architectures": ["OFAModel"],
    "attention_dropout": 0.0,
    "attn_scale_factor": 2.0,
    "bos_token_id": 0,
    "classifier_dropout": 0.0,
    "code_image_size": 128,
    "code_layernorm_embedding": True,
    "d_model": 256,
    "decoder_attention_heads": 4,
    "decoder_drop_path_rate": 0.0,
    "decoder_ffn_dim": 1024,
    "decoder_layerdrop": 0.0,
    "decoder_layers": 4,
    "decoder_normalize_before": True,
    "decoder_start_token_id": 0,
    "dropout": 0.1,
    "encoder_attention_heads": 4,
    "encoder_drop_path_rate": 0.0,
    "encoder_ffn_dim": 1024,
    "encoder_layerdrop": 0.0,
    "encoder_layers": 4,
    "encoder_normalize_before": True,
    "entangle_position_embedding": False,
    "eos_token_id": 2,
    "forced_eos_token_id": 2,
    "image_bucket_size": 42,
    "init_std": 0.02,
    "is_encoder_decoder": True,
    "layernorm_embedding": True,
    "max_position_embeddings": 1024,
    "model_type": "ofa",
    "normformer": True,
    "num_hidden_layers": 4,
    "pad_token_id": 1,
    "patch_layernorm_embedding": True,
    "resnet_drop_path_rate": 0.0,
    "resnet_model_path": None,
    "resnet_type": "resnet50",
    "scale_embedding": False,
    "share_attn_bias": False,
    "share_decoder_input_output_embed": True,
    "token_bucket_size": 256,
    "torch_dtype": "float32",
    "use_cache": False,
    "use_ofasys": False,
    "vocab_size": 59457,
}

# ModelScope's task config for OFA visual entailment: what OfaForAllTasks,
# OfaBasePreprocessor and the pipeline builder read (`cfg.model.*`, `cfg.task`,
# `cfg.pipeline.type`, `cfg.preprocessor`).
VISUAL_ENTAILMENT_CONFIGURATION: dict[str, object] = {
    "framework": "pytorch",
    "task": "visual-entailment",
    "pipeline": {"type": "visual-entailment"},
    "model": {
        "type": "ofa",
        "language": "en",
        "gen_type": "traverse",
        "prompt_type": "prev_output",
        "answer2label": ANSWER_FILE,
        "patch_image_size": 480,
        "max_image_size": 480,
        "max_src_length": 256,
        "imagenet_default_mean_and_std": False,
        "seed": 7,
        "demo": True,
    },
    "preprocessor": {"type": "ofa-tasks-preprocessor"},
}

# Words that become whole tokens (with and without GPT-2's leading-space marker):
# OFA's two prompt templates, the answers, and everyday English of SNLI-VE-like captions.
PROMPT_WORDS = "does the image describe can and text imply yes no maybe"
COMMON_WORDS = """
a an the this that these those there here is are was were be been being am do does did
has have had having will would can could should may might must shall not no yes maybe
i you he she it we they me him her us them my your his its our their mine yours
of in on at by for with from to into onto over under above below behind between near
next through across along around after before during while about against without up
down out off inside outside beside toward towards than then so because if or and but
one two three four five six seven eight nine ten many few some several all both each
every any none more most less other another same different only just very too also
man men woman women person people boy boys girl girls child children kid kids baby
family friend friends player players team crowd group couple adult adults guy lady
dog dogs cat cats bird birds horse horses cow cows sheep animal animals fish duck ducks
car cars bus truck bike bicycle motorcycle boat train plane street road sidewalk
building house city park beach water ocean sea lake river snow grass field tree trees
mountain hill sky sun rain table chair bench bed room kitchen window door wall floor
ball game sport soccer football basketball baseball tennis frisbee skateboard surfboard
shirt hat jacket dress shoes glasses bag phone camera book food pizza cake coffee
red blue green yellow black white brown orange pink purple gray grey dark light
big small large little tall short long old young new happy sad wet dry hot cold
front back top bottom left right side middle center corner edge end
sitting standing walking running playing riding holding wearing eating drinking
looking watching talking smiling laughing jumping climbing swimming sleeping lying
reading writing working cooking driving flying throwing catching kicking dancing
singing waiting posing carrying pulling pushing crossing using making taking
sits stands walks runs plays rides holds wears eats drinks looks watches talks
is are has have outdoors indoors outside inside together alone near
picture photo image scene view something nothing someone everyone
"""
# GPT-2 pre-tokens of the prompts' quotes and of common contractions.
PUNCTUATION_PIECES = (' "', ' "?', "'s", "'t", "'re")


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-symbol table as a list indexed by byte value.

    Printable bytes map to themselves; the others to code points from 256 up,
    so that every byte has a visible, whitespace-free symbol.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _byte_level(text: str, symbols: list[str]) -> list[str]:
    return [symbols[b] for b in text.encode("utf-8")]


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one pre-token: repeatedly merge the lowest-ranked pair."""
    unranked = len(ranks)
    while len(pieces) > 1:
        left, right = min(pairwise(pieces), key=lambda p: ranks.get(p, unranked))
        if (left, right) not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(pieces):
            if i + 1 < len(pieces) and pieces[i] == left and pieces[i + 1] == right:
                merged.append(left + right)
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def _word_list() -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    for word in (*PROMPT_WORDS.split(), *COMMON_WORDS.split()):
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def build_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The demo vocabulary and merges, built deterministically.

    Each target word is encoded with the merges so far; if it is not yet one
    token, merges joining its pieces left to right are appended (highest rank,
    so earlier words keep encoding to one token). Space-marked forms (`Ġyes`)
    are what prompts produce, since every word in them follows a space.
    """
    symbols = _byte_symbols()
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    words = _word_list()
    targets = [" " + w for w in words] + words + list(PUNCTUATION_PIECES)
    for target in targets:
        pieces = _apply_merges(_byte_level(target, symbols), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    vocab: dict[str, int] = {}
    for token in ("<s>", "<pad>", "</s>", "<unk>"):
        vocab[token] = len(vocab)
    for symbol in sorted(symbols, key=lambda s: (ord(s) >= 256, ord(s))):
        vocab[symbol] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    filler = 0
    while len(vocab) < BPE_VOCAB_SIZE - 1:
        vocab[f"<unused_{filler:05d}>"] = len(vocab)
        filler += 1
    vocab["<mask>"] = len(vocab)
    for target in targets:
        encoded = _apply_merges(_byte_level(target, symbols), ranks)
        if encoded != ["".join(_byte_level(target, symbols))]:
            raise AssertionError(f"demo BPE does not keep {target!r} whole: {encoded}")
    return vocab, merges


def _dump_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_files(out: Path) -> None:
    """`vocab.json` + `merges.txt` in the GPT-2 file format both tokenizers read."""
    vocab, merges = build_bpe()
    (out / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out / MERGES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def diversify_constant_tensors(module: torch.nn.Module, seed: int) -> None:
    """Give every constant-initialised float tensor random values, in place.

    A freshly initialised network has zero biases, unit norm scales, identity
    BatchNorm statistics and unit head scales (355 such tensors in OFA-tiny). A
    reimplementation that dropped a bias, swapped two LayerNorms or mis-folded
    BatchNorm would still agree with the reference on such weights; with random
    values everywhere, parity tests see every parameter. Scales stay near 1 and
    variances positive, so activations keep their usual size.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            flat = tensor.detach().flatten()
            value = float(flat[0])
            if not bool((flat == value).all()):
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if name.endswith("running_var"):
                fresh = 0.5 + torch.rand(tensor.shape, generator=generator, dtype=torch.float32)
            elif value == 0.0:
                fresh = 0.05 * noise
            else:
                fresh = value * (1.0 + 0.1 * noise)
            tensor.copy_(fresh.to(tensor.dtype))


def random_state_dict(config_json: Path, seed: int) -> dict[str, torch.Tensor]:
    """Weights of our own `OFAModel` for `config_json`, randomly initialised from `seed`.

    The network's own initialisation runs on a forked, seeded RNG (callers'
    global RNG state is left untouched), then `diversify_constant_tensors`.
    """
    from .modeling import OFAModel

    arch = OFAArchitecture.from_config_json(config_json)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OFAModel(arch)
    diversify_constant_tensors(model, seed)
    return model.state_dict()


StateDictFactory = Callable[[Path, int], dict[str, torch.Tensor]]

DECISIVE_SCALE = 3.0
"""Answer logits of a decisive checkpoint: this many whitened standard deviations."""
_CALIBRATION_SENTENCES = (
    "a man is riding a horse on the beach.",
    "two dogs are playing in the snow.",
    "the woman is holding a red umbrella.",
    "people are sitting at a table in a kitchen.",
)
"""Hypotheses for calibrating a decisive checkpoint (none contains an answer word, so
the answer embeddings being rewritten never enter these inputs)."""
_SHARED_EMBEDDING_KEYS = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.output_projection.weight",
)


def _calibration_images(seed: int, count: int = 6) -> list[Image.Image]:
    """Blurry colour fields with a bright square: deterministic, photo-like enough."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        grid = (torch.rand(6, 6, 3, generator=generator) * 255).to(torch.uint8).numpy()
        image = Image.fromarray(grid).resize((96, 96), Image.Resampling.BICUBIC)
        x, y = (int(v) for v in torch.randint(0, 64, (2,), generator=generator))
        image.paste((250, 250, 240), (x, y, x + 24, y + 24))
        images.append(image)
    return images


def make_decisive(
    model_dir: Path, state: dict[str, torch.Tensor], seed: int, scale: float = DECISIVE_SCALE
) -> dict[str, torch.Tensor]:
    """``state`` with answer-token embeddings that make the random network decisive.

    Why: random weights give almost uniform answers (top-1 margins of ~0.01), so
    precision and fidelity comparisons on them measure noise. Here the decoder
    states where answers are scored are computed on calibration inputs (images
    x sentences); the answer rows of the shared token embedding (the output
    projection) become three directions 120 degrees apart in the plane of the
    main variation with the image and the main variation with the sentence
    (orthogonal to the states' mean, whitened), times ``scale``. Answers then
    depend on both inputs, with large margins, and cover all three labels like a
    trained model's; every other weight is unchanged. Rows are rounded to 2**-10
    so that float noise of another CPU rarely changes a byte.
    """
    from .engine import VisualEntailmentEngine
    from .modeling import OFAModel
    from .scoring import AnswerScorer, ScoringInput
    from .settings import TaskSettings
    from .tokenizer import OFATokenizer

    arch = OFAArchitecture.from_config_json(model_dir / CONFIG_FILE)
    with torch.random.fork_rng(devices=[]):
        model = OFAModel(arch)
    model.load_state_dict(state, strict=True)
    engine = VisualEntailmentEngine(
        TaskSettings.from_model_dir(model_dir),
        OFATokenizer(model_dir),
        model.eval().requires_grad_(False),
    )
    states = []
    with torch.inference_mode():
        for image in _calibration_images(seed):
            batch = engine.collate(
                [engine.prepare(image, sentence) for sentence in _CALIBRATION_SENTENCES],
                channels_last=False,
            )
            # One ResNet pass per image, shared by its sentences: the stem is most of
            # the cost of calibrating.
            embeds = model.encoder.embed_patches(model.encoder.stem_features(batch.images[:1]))
            encoded = model.encoder(
                batch.input_ids, patch_embeds=embeds.expand(len(_CALIBRATION_SENTENCES), -1, -1, -1)
            )
            inputs = ScoringInput(encoded, batch.decoder_prompts, batch.prompt_lengths)
            states.append(AnswerScorer.last_states(model, inputs))
    hidden = torch.cat(states).double()  # [images * sentences, D], image by image
    mean = hidden.mean(0)
    per_image = hidden.view(-1, len(_CALIBRATION_SENTENCES), hidden.shape[1])
    by_image = (per_image - per_image.mean(0)).flatten(0, 1)  # what the image changes
    by_sentence = per_image.mean(0) - mean  # what the sentence changes
    basis = [mean / mean.norm()]
    for variation in (by_image, by_sentence):
        v = torch.linalg.svd(variation, full_matrices=False)[2][0]  # main direction
        for b in basis:  # Gram-Schmidt against the mean and the first direction
            v = v - (v @ b) * b
        basis.append(v / v.norm())
    plane = torch.stack(basis[1:])  # [2, D]
    spread = ((hidden - mean) @ plane.T).std(0)  # [2]
    offset = float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) * 2 * math.pi
    key = next(k for k in _SHARED_EMBEDDING_KEYS if k in state)
    embedding = state[key].clone()
    for k, answer in enumerate(ANSWER2LABEL):
        (token,) = engine.tokenizer.encode(" " + answer)
        angle = offset + 2 * math.pi * k / len(ANSWER2LABEL)
        direction = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        row = scale * ((direction / spread) @ plane)
        embedding[token] = (torch.round(row * 2**10) / 2**10).to(embedding.dtype)
    return {k: embedding if k in _SHARED_EMBEDDING_KEYS else v for k, v in state.items()}


def write_demo_checkpoint(
    out: Path | str,
    seed: int = DEFAULT_SEED,
    state_dict_factory: StateDictFactory | None = None,
    decisive: bool = False,
) -> Path:
    """Write a complete random-weight model directory to `out` and return its path.

    The files go to a staging folder beside `out` first, so that a concurrent reader
    never sees half a checkpoint: a new `out` appears whole in one rename; an existing
    one has its files replaced one by one (each replace atomic).

    Args:
        seed: the weights' random seed.
        state_dict_factory: `(config_json, seed) -> state dict`; default our own
            network (`random_state_dict`).
        decisive: rewrite the answer embeddings (`make_decisive`) so that answers
            are confident and varied; recorded as `"decisive": true` in
            `configuration.json` (still `demo: true`).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        configuration = copy.deepcopy(VISUAL_ENTAILMENT_CONFIGURATION)
        if decisive:
            configuration["model"]["decisive"] = True  # type: ignore[index]
        _dump_json(staging / CONFIGURATION_FILE, configuration)
        _dump_json(staging / CONFIG_FILE, OFA_TINY_CONFIG)
        _dump_json(staging / ANSWER_FILE, ANSWER2LABEL)
        write_tokenizer_files(staging)
        factory = state_dict_factory or random_state_dict
        state = factory(staging / CONFIG_FILE, seed)
        if decisive:
            state = make_decisive(staging, state, seed)
        torch.save(state, staging / WEIGHTS_FILE)
        staging.chmod(0o755)  # mkdtemp makes it 0700
        try:
            staging.rename(out)
        except OSError:  # `out` exists already (and is not an empty folder)
            if not out.is_dir():
                raise
            for path in staging.iterdir():
                path.replace(out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def checkpoint_files(model_dir: Path) -> Iterable[Path]:
    """The files a demo checkpoint consists of, in a stable order (for hashing)."""
    names = (CONFIGURATION_FILE, CONFIG_FILE, ANSWER_FILE, VOCAB_FILE, MERGES_FILE, WEIGHTS_FILE)
    return (model_dir / name for name in names)
