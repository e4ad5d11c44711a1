"""OFA's encoder-decoder, inference path only, with ModelScope's parameter names.

``OFAModel(arch).state_dict()`` has exactly the keys of ModelScope's
``modelscope.models.multi_modal.ofa.OFAModel`` for the same ``config.json``
(buffers included), so checkpoints move both ways without conversion.
Parameters that exist only for tasks other than visual entailment (image-code
positions and norms of the decoder, the optional MLP head and temperature) are
kept so that loading stays strict; they are never used here.

What differs from the reference is only how the work is arranged: position
biases depend on positions alone, so they are computed once per batch and
broadcast instead of once per item; attention runs through
``scaled_dot_product_attention``; the decoder returns hidden states so that
scoring can project only what it needs; linear layers are ``onednn.Linear``
(``nn.Linear`` with a switch to run through oneDNN on CPUs where MKL is slow).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .onednn import Linear
from .resnet import ResNet
from .settings import OFAArchitecture

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


def make_token_bucket_position(bucket_size: int, max_position: int = 1024) -> torch.Tensor:
    """Relative text positions, log-bucketed beyond bucket_size/2 (OFA's formula)."""
    context = torch.arange(max_position, dtype=torch.long)[:, None]
    memory = torch.arange(max_position, dtype=torch.long)[None, :]
    relative = context - memory
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), mid - 1, torch.abs(relative))
    log_pos = (
        torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    )
    log_pos = log_pos.int()
    bucket = torch.where(abs_pos.le(mid), relative, log_pos * sign).long()
    return bucket + bucket_size - 1


def make_image_bucket_position(bucket_size: int, num_relative_distance: int) -> torch.Tensor:
    """Relative 2-D patch positions; row/column 0 are reserved for a class token."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij")
    )
    flat = torch.flatten(coords, 1)
    relative = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += bucket_size - 1
    relative[:, :, 1] += bucket_size - 1
    relative[:, :, 0] *= 2 * bucket_size - 1
    index = torch.zeros(size=(bucket_size * bucket_size + 1,) * 2, dtype=relative.dtype)
    index[1:, 1:] = relative.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


def image_position_ids(
    height: int, width: int, bucket_size: int, device: torch.device
) -> torch.Tensor:
    """Row-major patch ids into the image bucket table (id 0 is the unused class slot)."""
    ids = (
        torch.arange(width).unsqueeze(0).expand(height, width)
        + torch.arange(height).unsqueeze(1) * bucket_size
        + 1
    )
    return ids.reshape(-1).to(device)


def padding_bias(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] bool (True = pad) -> [B, 1, 1, S] additive bias, as ModelScope's _expand_mask."""
    return torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device).masked_fill(
        padding_mask, torch.finfo(dtype).min
    )[:, None, None, :]


def _attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + bias) v, and each query's log-sum-exp (float32, [..., T, 1])."""
    scores = (query @ key.transpose(-1, -2)).float() * scale + bias.float()
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse).to(value.dtype) @ value, lse


@dataclass
class PatchAttention:
    """The first encoder layer's attention among one image's patches, for the items about it.

    Why: the first layer's input at the patch positions is the image's embedding
    alone, so there the patches' queries, keys and values, and the patches'
    attention over the patches, are the same for every hypothesis about the image.
    Only the text tokens differ, and the patches' attention to them, a softmax over
    a few keys that ``out`` and ``lse`` (the two halves of one softmax) merge with
    exactly. For one image and many hypotheses that is one of the encoder's four
    900 x 900 attentions and three projections of 900 tokens done once instead of
    per item. Batch dimension 1 (broadcast) or one row per item of the pass.
    """

    query: torch.Tensor
    """[B, H, N, D/H] the patches' queries (N = h*w)."""
    key: torch.Tensor
    value: torch.Tensor
    out: torch.Tensor
    """[B, H, N, D/H] the patches' attention over the patches alone."""
    lse: torch.Tensor
    """[B, H, N, 1] float32 log-sum-exp of those scores, per query."""

    @staticmethod
    def stack(parts: list[PatchAttention]) -> PatchAttention:
        """One row per item (parts of batch 1)."""
        if len(parts) == 1:
            return parts[0]
        fields = ("query", "key", "value", "out", "lse")
        return PatchAttention(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))


class OFAAttention(nn.Module):
    """Multi-head attention with an additive position bias and NormFormer head scaling."""

    def __init__(self, embed_dim: int, num_heads: int, scale_factor: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads))

    def _shape(self, states: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, H, T, D/H]."""
        bsz, seq_len, _ = states.shape
        return states.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor,
        attn_bias: torch.Tensor,
        lengths: list[int] | None = None,
        patch_attention: PatchAttention | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` [B, T, D] attend to ``key_value_states`` [B, S, D].

        Args:
            attn_bias: broadcasts to [B, H, T, S] (position bias plus padding or
                causal mask); [1, H, S, S] with ``lengths``.
            lengths: self-attention over right-padded items, item by item over each
                one's first lengths[i] positions. Why: it spares a [B, H, S, S] bias
                per layer, which on CPU costs more than batching saves. Outputs at
                padded positions stay zero (masked later, as in the reference).
            patch_attention: the first encoder layer's part among the patches,
                computed once per image (``PatchAttention``); only the text positions
                of ``hidden_states`` are read then.
        """
        bsz, tgt_len, embed_dim = hidden_states.shape
        if patch_attention is not None:
            attn_output = self._attend_with_patches(hidden_states, attn_bias, patch_attention)
            return self._output(attn_output, bsz, tgt_len, embed_dim)
        query_states = self._shape(self.q_proj(hidden_states))
        key_states = self._shape(self.k_proj(key_value_states))
        value_states = self._shape(self.v_proj(key_value_states))
        if lengths is None:
            attn_output = F.scaled_dot_product_attention(
                query_states, key_states, value_states, attn_mask=attn_bias, scale=self.scaling
            )
        else:
            attn_output = torch.zeros_like(query_states)
            for i, n in enumerate(lengths):
                attn_output[i : i + 1, :, :n] = F.scaled_dot_product_attention(
                    query_states[i : i + 1, :, :n],
                    key_states[i : i + 1, :, :n],
                    value_states[i : i + 1, :, :n],
                    attn_mask=attn_bias[:, :, :n, :n],
                    scale=self.scaling,
                )
        return self._output(attn_output, bsz, tgt_len, embed_dim)

    def _output(self, attn_output: torch.Tensor, bsz: int, tgt_len: int, dim: int) -> torch.Tensor:
        """[B, H, T, D/H] per-head outputs -> [B, T, D]: head scales, then out_proj."""
        attn_output = attn_output * self.c_attn.to(attn_output.dtype)[None, :, None, None]
        return self.out_proj(attn_output.transpose(1, 2).reshape(bsz, tgt_len, dim))

    def patch_attention(self, patches: torch.Tensor, bias: torch.Tensor) -> PatchAttention:
        """``patches`` [B, N, D] (this attention's input at the patch positions) attending
        to themselves; ``bias`` broadcasts to [B, H, N, N]."""
        query, key, value = (
            self._shape(proj(patches)) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out, lse = _attend(query, key, value, bias, self.scaling)
        return PatchAttention(query, key, value, out, lse)

    def _attend_with_patches(
        self, hidden_states: torch.Tensor, attn_bias: torch.Tensor, patches: PatchAttention
    ) -> torch.Tensor:
        """Self-attention over [patches, text] with the patches' part given: [B, H, S, D/H]."""
        bsz = hidden_states.shape[0]
        n = patches.key.shape[2]
        text = hidden_states[:, n:]
        q_text, k_text, v_text = (
            self._shape(proj(text)) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )

        def batch(t: torch.Tensor) -> torch.Tensor:
            return t.expand(bsz, -1, -1, -1)

        keys = torch.cat([batch(patches.key), k_text], dim=2)
        values = torch.cat([batch(patches.value), v_text], dim=2)
        text_out = F.scaled_dot_product_attention(
            q_text, keys, values, attn_mask=attn_bias[:, :, n:, :], scale=self.scaling
        )
        # The patches' queries over the text keys, merged with their part over the patches.
        to_text, to_text_lse = _attend(
            batch(patches.query), k_text, v_text, attn_bias[:, :, :n, n:], self.scaling
        )
        lse = torch.logaddexp(patches.lse, to_text_lse)
        patch_out = torch.exp(patches.lse - lse) * patches.out.float()
        patch_out = patch_out + torch.exp(to_text_lse - lse) * to_text.float()
        return torch.cat([patch_out.to(text_out.dtype), text_out], dim=2)


def _layer_norm(dim: int, enabled: bool = True) -> nn.LayerNorm | None:
    """A LayerNorm where the config enables it (None keeps the key out of the state dict)."""
    return nn.LayerNorm(dim) if enabled else None


def _apply(norm: nn.Module | None, hidden_states: torch.Tensor) -> torch.Tensor:
    """``norm(hidden_states)``, or them unchanged where the config has no such norm."""
    return norm(hidden_states) if norm is not None else hidden_states


def _residual(
    hidden_states: torch.Tensor,
    norm: nn.Module,
    pre: bool,
    block: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One residual sublayer: ``norm`` before ``block`` (pre-norm) or after the sum."""
    if pre:
        return hidden_states + block(norm(hidden_states))
    return norm(hidden_states + block(hidden_states))


def _clamp_half(x: torch.Tensor) -> torch.Tensor:
    """fp16 overflow guard of the reference encoder layer, without its host sync.

    The reference clamps to +-(max - 1000) only when the tensor holds an inf or NaN;
    asking that is a GPU-to-host sync per layer. Clamping always gives the same
    result for every value up to 64504 in magnitude and for infs (NaN stays NaN),
    so only values in the last 1000 below fp16's max could differ.
    """
    if x.dtype == torch.float16:
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


class _OFALayer(nn.Module):
    """What encoder and decoder layers share: self-attention and the FFN, each a residual
    sublayer, pre- or post-normed, with NormFormer's mid norms (ModelScope's state-dict
    names)."""

    def __init__(self, arch: OFAArchitecture, heads: int, ffn: int, normalize_before: bool) -> None:
        super().__init__()
        d = arch.d_model
        self.self_attn = OFAAttention(d, heads, arch.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = _layer_norm(d, arch.normformer)
        self.fc1 = Linear(d, ffn)
        self.fc2 = Linear(ffn, d)
        self.ffn_layer_norm = _layer_norm(ffn, arch.normformer)
        self.final_layer_norm = nn.LayerNorm(d)
        self.normalize_before = normalize_before
        self.activation_fn = _ACTIVATIONS[arch.activation_function]

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """fc1, activation, NormFormer's mid norm where configured, fc2."""
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        return self.fc2(_apply(self.ffn_layer_norm, hidden_states))

    def attention_sublayer(
        self,
        hidden_states: torch.Tensor,
        norms: tuple[nn.Module, nn.Module | None],
        attend: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The residual sublayer around ``attend``: ``norms`` are its LayerNorm and
        NormFormer's mid norm (None where the config has none)."""
        layer_norm, mid_layer_norm = norms
        return _residual(
            hidden_states,
            layer_norm,
            self.normalize_before,
            lambda h: _apply(mid_layer_norm, attend(h)),
        )

    def ffn_sublayer(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The residual sublayer around ``feed_forward``."""
        return _residual(
            hidden_states, self.final_layer_norm, self.normalize_before, self.feed_forward
        )


class OFAEncoderLayer(_OFALayer):
    """Self-attention and FFN."""

    def __init__(self, arch: OFAArchitecture) -> None:
        super().__init__(
            arch, arch.encoder_attention_heads, arch.encoder_ffn_dim, arch.encoder_normalize_before
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_bias: torch.Tensor,
        lengths: list[int] | None = None,
        patch_attention: PatchAttention | None = None,
    ) -> torch.Tensor:
        """[B, S, D] -> [B, S, D]; the arguments as in ``OFAAttention.forward``."""
        hidden_states = self.attention_sublayer(
            hidden_states,
            (self.self_attn_layer_norm, self.self_attn_mid_layer_norm),
            lambda h: self.self_attn(h, h, attn_bias, lengths, patch_attention),
        )
        hidden_states = self.ffn_sublayer(hidden_states)
        return _clamp_half(hidden_states)


class OFADecoderLayer(_OFALayer):
    """Causal self-attention, cross-attention to the encoder, FFN."""

    def __init__(self, arch: OFAArchitecture) -> None:
        heads = arch.decoder_attention_heads
        super().__init__(arch, heads, arch.decoder_ffn_dim, arch.decoder_normalize_before)
        d = arch.d_model
        # ModelScope's name for what Hugging Face's BART calls encoder_attn (a state-dict key).
        self.cross_attn = OFAAttention(d, heads, arch.attn_scale_factor)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = _layer_norm(d, arch.normformer)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attn_bias: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attn_bias: torch.Tensor,
    ) -> torch.Tensor:
        """[B, T, D] -> [B, T, D], attending to ``encoder_hidden_states`` [B, S, D]."""
        hidden_states = self.attention_sublayer(
            hidden_states,
            (self.self_attn_layer_norm, self.self_attn_mid_layer_norm),
            lambda h: self.self_attn(h, h, self_attn_bias),
        )
        hidden_states = self.attention_sublayer(
            hidden_states,
            (self.cross_attn_layer_norm, self.cross_attn_mid_layer_norm),
            lambda h: self.cross_attn(h, encoder_hidden_states, encoder_attn_bias),
        )
        return self.ffn_sublayer(hidden_states)


@dataclass
class EncoderOutput:
    """What the decoder needs from the encoder (ModelScope's encoder-output names)."""

    last_hidden_state: torch.Tensor
    """[B, S, D] encoder states (image patches first, then text tokens)."""
    padding_mask: torch.Tensor
    """[B, S] True where a text position is padding."""
    position_embedding: torch.Tensor
    """[S, D] layer-normed absolute position embeddings, shared by the batch."""


@dataclass
class _PositionTable:
    """The encoder's position embeddings and per-layer biases for up to ``text_len`` tokens."""

    key: tuple[int, int, torch.dtype, torch.device]
    text_len: int
    position: torch.Tensor
    """[h*w + text_len, D] layer-normed absolute positions (image patches first)."""
    layer_biases: list[torch.Tensor]
    """Per layer, [1, H, S, S]: absolute plus relative position bias, in the model dtype."""


def _rel_tables(count: int, num_rel: int, heads: int) -> nn.ModuleList:
    """Relative-position bias tables (one per layer unless shared), zero-initialised."""
    tables = nn.ModuleList(nn.Embedding(num_rel, heads) for _ in range(count))
    for t in tables:
        nn.init.zeros_(t.weight)
    return tables


class _OFAStack(nn.Module):
    """What the encoder and the decoder hold alike: the architecture, the shared token
    embedding and its scale, and their number of attention heads."""

    def __init__(self, arch: OFAArchitecture, embed_tokens: nn.Embedding, heads: int) -> None:
        super().__init__()
        self.arch = arch
        self.num_heads = heads
        self.embed_scale = math.sqrt(arch.d_model) if arch.scale_embedding else 1.0
        self.embed_tokens = embed_tokens

    def _add_position_embeddings(self) -> None:
        """Absolute positions of text tokens and of image patches, each with its LayerNorm,
        and the scaling of the attention bias they make (created in checkpoint order)."""
        arch, d = self.arch, self.arch.d_model
        self.embed_positions = nn.Embedding(arch.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(arch.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_scaling = float(d / self.num_heads * arch.attn_scale_factor) ** -0.5


class OFAEncoder(_OFAStack):
    """Patch embeddings (stem, then projection) and text tokens through the encoder layers."""

    def __init__(self, arch: OFAArchitecture, embed_tokens: nn.Embedding) -> None:
        super().__init__(arch, embed_tokens, arch.encoder_attention_heads)
        d, heads = arch.d_model, self.num_heads
        self.type_embedding = nn.Embedding(2, d) if arch.add_type_embedding else None
        self.embed_images = ResNet(arch.resnet_layers)
        """The stem. The attribute keeps the checkpoint's name; code says ``stem``."""
        self.image_proj = Linear(ResNet.out_channels, d)
        self.patch_layernorm_embedding = _layer_norm(d, arch.patch_layernorm_embedding)
        self._add_position_embeddings()
        self.pos_q_linear = Linear(d, d)
        self.pos_k_linear = Linear(d, d)
        self.layers = nn.ModuleList(OFAEncoderLayer(arch) for _ in range(arch.encoder_layers))
        self.layer_norm = _layer_norm(d, arch.encoder_normalize_before)
        tables = 1 if arch.share_attn_bias else arch.encoder_layers
        self.token_rel_pos_table_list = _rel_tables(tables, 2 * arch.token_bucket_size - 1, heads)
        image_num_rel = (2 * arch.image_bucket_size - 1) ** 2 + 3
        self.image_rel_pos_table_list = _rel_tables(tables, image_num_rel, heads)
        self.register_buffer(
            "image_rp_bucket", make_image_bucket_position(arch.image_bucket_size, image_num_rel)
        )
        self.layernorm_embedding = _layer_norm(d, arch.layernorm_embedding)
        self.register_buffer("token_rp_bucket", make_token_bucket_position(arch.token_bucket_size))
        self.stem_runner: Callable[[torch.Tensor], torch.Tensor] | None = None
        """Runs the stem instead of its eager modules when set: a compiled copy
        (``compilation.py``) or ``onednn_stem.OneDNNStem``."""
        self._position_cache: _PositionTable | None = None

    @property
    def stem(self) -> ResNet:
        """The ResNet stem: images to stem features (``embed_images`` in the state dict)."""
        return self.embed_images

    def stem_features(
        self, images: torch.Tensor, image_chunk_size: int | None = None
    ) -> torch.Tensor:
        """[B, 3, P, P] normalized images -> [B, 1024, P/16, P/16] stem features.

        ``image_chunk_size`` runs the stem over at most this many images at a time
        (None: all at once): on CPU its activations fall out of cache as B grows,
        while the transformer layers after it still see the whole batch.
        """
        stem = self.stem_runner or self.stem
        chunk = image_chunk_size
        if chunk is None or images.shape[0] <= chunk:
            return stem(images)
        return torch.cat([stem(part) for part in images.split(chunk)])

    def _abs_bias(self, pos: torch.Tensor) -> torch.Tensor:
        """[S, D] positions -> [H, S, S] content-independent attention bias."""
        s = pos.shape[0]
        q = self.pos_q_linear(pos).view(s, self.num_heads, -1).transpose(0, 1) * self.pos_scaling
        k = self.pos_k_linear(pos).view(s, self.num_heads, -1).transpose(0, 1)
        return q @ k.transpose(1, 2)

    def embed_patches(self, features: torch.Tensor) -> torch.Tensor:
        """[B, 1024, h, w] stem features -> [B, h, w, D] patch embeddings (projected,
        scaled, typed, normalised): the encoder's input at the patch positions. They
        depend on the image alone, so items that share an image share them."""
        embeds = self.image_proj(features.permute(0, 2, 3, 1)) * self.embed_scale
        if self.type_embedding is not None:
            embeds = embeds + self.type_embedding.weight[1]
        return _apply(self.patch_layernorm_embedding, embeds)

    def patch_attention(self, patch_embeds: torch.Tensor) -> PatchAttention:
        """The first layer's attention among the patches of ``patch_embeds`` [B, h, w, D],
        for ``forward(..., patch_attention=...)`` (see ``PatchAttention``)."""
        h, w = patch_embeds.shape[1:3]
        n = h * w
        layer = self.layers[0]
        states = patch_embeds.flatten(1, 2)
        if layer.normalize_before:
            states = layer.self_attn_layer_norm(states)
        bias = self._position_table(h, w, 1, states.dtype).layer_biases[0][:, :, :n, :n]
        return layer.self_attn.patch_attention(states, bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        *,
        patch_embeds: torch.Tensor | None = None,
        patch_attention: PatchAttention | None = None,
        image_chunk_size: int | None = None,
        attend_by_length: bool = False,
    ) -> EncoderOutput:
        """Encode right-padded ``input_ids`` [B, L] with their images.

        The image part comes either as ``images`` or, when the caller shares them
        between items of the same image, as their patch embeddings; the result is the
        same up to float rounding whichever arguments arrange the work.

        Args:
            images: [B, 3, P, P] normalized (None when ``patch_embeds`` is given).
            patch_embeds: [B, h, w, D] from ``embed_patches``.
            patch_attention: the first layer's attention among the patches
                (``patch_attention``), with ``patch_embeds``.
            image_chunk_size: as in ``stem_features``.
            attend_by_length: self-attention item by item over each item's real
                length when the batch has padding (``OFAAttention.forward``): faster
                on CPU; the batched kernel is better on GPUs.
        """
        bsz, text_len = input_ids.shape
        device = input_ids.device
        if patch_embeds is None:
            patch_embeds = self.embed_patches(self.stem_features(images, image_chunk_size))
        h, w = patch_embeds.shape[1:3]
        num_patches = h * w
        inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        if self.type_embedding is not None:
            inputs_embeds = inputs_embeds + self.type_embedding.weight[0]
        inputs_embeds = _apply(self.layernorm_embedding, inputs_embeds)
        hidden_states = torch.cat([patch_embeds.flatten(1, 2), inputs_embeds], dim=1)

        text_pad = input_ids.eq(self.arch.pad_token_id)
        padding_mask = torch.cat(
            [torch.zeros(bsz, num_patches, dtype=torch.bool, device=device), text_pad], dim=1
        )
        has_pads = bool(text_pad.any())
        if has_pads:
            hidden_states = hidden_states * (1 - padding_mask.unsqueeze(-1).type_as(hidden_states))

        seq_len = num_patches + text_len
        table = self._position_table(h, w, text_len, hidden_states.dtype)
        position_embedding = table.position[:seq_len]  # [S, D]
        lengths = attention_mask = None
        if has_pads and attend_by_length:
            lengths = (padding_mask.shape[1] - text_pad.sum(dim=1)).tolist()
        elif has_pads:
            attention_mask = padding_bias(padding_mask, hidden_states.dtype)

        shared = patch_attention if lengths is None else None  # by length: the plain path
        for layer, layer_bias in zip(self.layers, table.layer_biases, strict=True):
            attn_bias = layer_bias[:, :, :seq_len, :seq_len]
            if attention_mask is not None:
                attn_bias = attn_bias + attention_mask
            hidden_states = layer(hidden_states, attn_bias, lengths, shared)
            shared = None  # the first layer's input alone depends on the image alone
        hidden_states = _apply(self.layer_norm, hidden_states)
        return EncoderOutput(
            last_hidden_state=hidden_states,
            padding_mask=padding_mask,
            position_embedding=position_embedding,
        )

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """Drop cached position biases: they were computed from the old weights."""
        self._position_cache = None  # new weights, new positions
        super()._load_from_state_dict(*args, **kwargs)

    def _position_table(self, h: int, w: int, text_len: int, dtype: torch.dtype) -> _PositionTable:
        """Position embeddings and per-layer position biases covering ``text_len`` tokens.

        Why cached: they depend on positions alone, never on the batch, and every
        position's row is the same whatever the text length (the text comes after
        the image patches, and its position ids and relative buckets start at 0), so
        the bias for S = h*w + L tokens is the top-left S x S block of the bias for
        any longer text. Building them took several passes over an [H, S, S] tensor
        per layer per batch (a visible share of a batch of one on CPU). The table is built
        for twice the longest text seen so far, so it is rebuilt only a few times.
        """
        device = self.embed_positions.weight.device
        cached = self._position_cache
        if (
            cached is not None
            and cached.key == (h, w, dtype, device)
            and cached.text_len >= text_len
        ):
            return cached
        limit = min(self.arch.max_position_embeddings, self.token_rp_bucket.shape[0])
        if text_len > limit:
            raise ValueError(f"{text_len} text tokens exceed the model's {limit} positions")
        num_patches = h * w
        covered = max(text_len, 2 * cached.text_len if cached else 64)
        # A row stride that is a multiple of 16 keeps sliced biases usable by the
        # fused GPU attention kernels (they require aligned strides for the mask).
        covered = min(limit, covered + (-(num_patches + covered)) % 16)
        patch_ids = image_position_ids(h, w, self.arch.image_bucket_size, device)
        text_pos = self.pos_ln(self.embed_positions.weight[:covered])
        image_pos = self.image_pos_ln(self.embed_image_positions(patch_ids))
        position = torch.cat([image_pos, text_pos], dim=0)  # [S, D]
        abs_bias = self._abs_bias(position)
        token_bucket = self.token_rp_bucket[:covered, :covered]
        image_bucket = self.image_rp_bucket[patch_ids][:, patch_ids]
        biases = []
        for idx in range(len(self.layers)):
            t = 0 if self.arch.share_attn_bias else idx
            bias = abs_bias.clone()
            bias[:, num_patches:, num_patches:] += F.embedding(
                token_bucket, self.token_rel_pos_table_list[t].weight
            ).permute(2, 0, 1)
            bias[:, :num_patches, :num_patches] += F.embedding(
                image_bucket, self.image_rel_pos_table_list[t].weight
            ).permute(2, 0, 1)
            biases.append(bias.unsqueeze(0).to(dtype))
        self._position_cache = _PositionTable((h, w, dtype, device), covered, position, biases)
        return self._position_cache


class OFADecoder(_OFAStack):
    """The decoder, returning hidden states (scoring projects only the answers' logits)."""

    def __init__(self, arch: OFAArchitecture, embed_tokens: nn.Embedding) -> None:
        super().__init__(arch, embed_tokens, arch.decoder_attention_heads)
        d, heads = arch.d_model, self.num_heads
        self.layers = nn.ModuleList(OFADecoderLayer(arch) for _ in range(arch.decoder_layers))
        self.layernorm_embedding = _layer_norm(d, arch.layernorm_embedding)
        self._add_position_embeddings()
        self.self_pos_q_linear = Linear(d, d)
        self.self_pos_k_linear = Linear(d, d)
        self.cross_pos_q_linear = Linear(d, d)
        self.cross_pos_k_linear = Linear(d, d)
        self.code_layernorm_embedding = _layer_norm(d, arch.code_layernorm_embedding)
        self.layer_norm = _layer_norm(d, arch.decoder_normalize_before)
        self.output_projection = nn.Linear(d, arch.vocab_size, bias=False)
        if arch.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        tables = 1 if arch.share_attn_bias else arch.decoder_layers
        self.token_rel_pos_table_list = _rel_tables(tables, 2 * arch.token_bucket_size - 1, heads)
        image_num_rel = (2 * arch.image_bucket_size - 1) ** 2 + 3
        window = arch.code_image_size // 8
        code_ids = (
            torch.arange(window).unsqueeze(0).expand(window, window)
            + torch.arange(window).unsqueeze(1) * arch.image_bucket_size
            + 1
        )
        code_ids = torch.cat([torch.tensor([0]), code_ids.reshape(-1), torch.tensor([1024] * 768)])
        self.register_buffer("image_position_idx", code_ids)
        self.image_rel_pos_table_list = _rel_tables(tables, image_num_rel, heads)
        self.register_buffer(
            "image_rp_bucket", make_image_bucket_position(arch.image_bucket_size, image_num_rel)
        )
        self.register_buffer("token_rp_bucket", make_token_bucket_position(arch.token_bucket_size))

    def _pos_bias(
        self,
        q_linear: nn.Linear,
        k_linear: nn.Linear,
        tgt_pos: torch.Tensor,
        src_pos: torch.Tensor,
    ) -> torch.Tensor:
        """[T, D] and [S, D] positions -> [H, T, S] attention bias."""
        query = q_linear(tgt_pos).view(tgt_pos.shape[0], self.num_heads, -1).transpose(0, 1)
        key = k_linear(src_pos).view(src_pos.shape[0], self.num_heads, -1).transpose(0, 1)
        return (query * self.pos_scaling) @ key.transpose(1, 2)

    def forward(self, input_ids: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        """Teacher-forced decoder states [B, T, D] after the final norm (not projected).

        Causal self-attention only, as ModelScope's traverse scoring calls it: with
        right padding, no real position ever sees a pad.
        """
        tgt_len = input_ids.shape[1]
        tgt_pos = self.pos_ln(self.embed_positions.weight[:tgt_len])
        self_pos_bias = self._pos_bias(
            self.self_pos_q_linear, self.self_pos_k_linear, tgt_pos, tgt_pos
        )
        cross_pos_bias = self._pos_bias(
            self.cross_pos_q_linear,
            self.cross_pos_k_linear,
            tgt_pos,
            encoder_out.position_embedding,
        ).unsqueeze(0)
        hidden_states = self.embed_tokens(input_ids) * self.embed_scale
        hidden_states = _apply(self.layernorm_embedding, hidden_states)
        encoder_attn_bias = cross_pos_bias + padding_bias(
            encoder_out.padding_mask, cross_pos_bias.dtype
        )
        encoder_attn_bias = encoder_attn_bias.to(hidden_states.dtype)
        causal_mask = torch.full(
            (tgt_len, tgt_len), float("-inf"), device=hidden_states.device
        ).triu(1)
        token_bucket = self.token_rp_bucket[:tgt_len, :tgt_len]
        for idx, layer in enumerate(self.layers):
            table = self.token_rel_pos_table_list[0 if self.arch.share_attn_bias else idx]
            rel_pos_bias = F.embedding(token_bucket, table.weight).permute(2, 0, 1)
            self_attn_bias = (self_pos_bias + rel_pos_bias + causal_mask).unsqueeze(0)
            hidden_states = layer(
                hidden_states,
                self_attn_bias.to(hidden_states.dtype),
                encoder_out.last_hidden_state,
                encoder_attn_bias,
            )
        return _apply(self.layer_norm, hidden_states)


class OFAModel(nn.Module):
    """OFA with a shared token embedding; ``state_dict`` keys equal ModelScope's OFAModel."""

    def __init__(self, arch: OFAArchitecture) -> None:
        super().__init__()
        self.arch = arch
        shared = nn.Embedding(arch.vocab_size, arch.d_model, arch.pad_token_id)
        self.encoder = OFAEncoder(arch, shared)
        self.decoder = OFADecoder(arch, shared)
        if not arch.exclude_mlp:
            self.mlp_head = nn.Linear(arch.d_model, arch.mlp_dim)
        if arch.temperature_init_value:
            self.temp = nn.Parameter(arch.temperature_init_value * torch.ones([]))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation in the spirit of OFA's (used for demo checkpoints only)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.02)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 0.02)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
