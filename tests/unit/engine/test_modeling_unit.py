"""modeling.py: ModelScope's state-dict layout, and batching that leaves each item alone."""

from __future__ import annotations

import pytest
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.modeling import (
    OFAModel,
    PatchAttention,
    make_image_bucket_position,
    make_token_bucket_position,
)
from ofa_ve_engine.settings import OFAArchitecture
from support.engine_tiny import TINY_CONFIG


def _arch(**overrides: object) -> OFAArchitecture:
    return OFAArchitecture.from_dict({**TINY_CONFIG, **overrides})


def test_state_dict_keys_are_modelscopes() -> None:
    keys = set(OFAModel(_arch()).state_dict())
    for key in (
        "encoder.embed_tokens.weight",
        "encoder.embed_images.layer1.0.downsample.1.running_var",
        "encoder.image_proj.weight",
        "encoder.layers.0.self_attn.c_attn",
        "encoder.layers.0.self_attn_mid_layer_norm.weight",
        "encoder.layers.0.ffn_layer_norm.weight",
        "encoder.layers.0.fc1.weight",
        "encoder.token_rel_pos_table_list.0.weight",
        "decoder.layers.0.cross_attn.q_proj.weight",
        "decoder.layers.0.cross_attn_mid_layer_norm.bias",
        "decoder.layers.0.fc2.bias",
        "decoder.output_projection.weight",
        "decoder.image_position_idx",
        "decoder.code_layernorm_embedding.weight",
    ):
        assert key in keys, key
    assert not any("encoder_attn" in k or "mlp_head" in k for k in keys)
    assert "mlp_head.weight" in OFAModel(_arch(exclude_mlp=False)).state_dict()
    no_normformer = set(OFAModel(_arch(normformer=False)).state_dict())
    assert not any("mid_layer_norm" in k or "ffn_layer_norm" in k for k in no_normformer)


def test_token_embedding_is_shared() -> None:
    model = OFAModel(_arch())
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight


def test_position_buckets() -> None:
    tokens = make_token_bucket_position(8, max_position=32)
    assert tokens.shape == (32, 32) and int(tokens[0, 0]) == 7  # relative 0 -> bucket_size - 1
    assert torch.equal(tokens.diagonal(), torch.full((32,), 7))
    images = make_image_bucket_position(3, (2 * 3 - 1) ** 2 + 3)
    assert images.shape == (10, 10) and int(images[0, 0]) == (2 * 3 - 1) ** 2 + 2


@torch.inference_mode()
def test_each_item_is_computed_as_if_alone(
    tiny_engine: VisualEntailmentEngine, tiny_items: list
) -> None:
    """Right padding, both self-attention arrangements and ResNet chunks: same states."""
    e = tiny_engine
    model = e.model

    def encode(items: list, **options: object) -> torch.Tensor:
        batch = e.collate(items)
        out = model.encoder(batch.input_ids, batch.images, **options)
        states = model.decoder(batch.decoder_prompts, out)
        return states, batch.prompt_lengths

    batched, lengths = encode(tiny_items)
    for options in ({"attend_by_length": True}, {"image_chunk_size": 2}):
        other, _ = encode(tiny_items, **options)
        for i, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(other[i, :n], batched[i, :n], atol=1e-5, rtol=0)
    for i, item in enumerate(tiny_items):
        alone, (n,) = encode([item])
        torch.testing.assert_close(alone[0, :n], batched[i, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalize_before", [True, False])
@torch.inference_mode()
def test_the_first_layers_patch_attention_shared_gives_the_same_states(
    tiny_engine: VisualEntailmentEngine, tiny_items: list, normalize_before: bool, monkeypatch
) -> None:
    """One image's PatchAttention, broadcast or one row per item, over a padded batch of
    hypotheses: the encoder states equal the plain path's (pre- and post-norm layers)."""
    model = tiny_engine.model
    encoder = model.encoder
    for layer in encoder.layers:  # post-norm: the same weights, the other arrangement
        monkeypatch.setattr(layer, "normalize_before", normalize_before)
    batch = tiny_engine.collate(tiny_items)
    embeds = encoder.embed_patches(encoder.stem_features(batch.images[:1]))  # one image
    same = embeds.expand(len(tiny_items), -1, -1, -1)
    plain = encoder(batch.input_ids, patch_embeds=same).last_hidden_state
    once = encoder.patch_attention(embeds)
    shared = encoder(batch.input_ids, patch_embeds=same, patch_attention=once).last_hidden_state
    rows = PatchAttention.stack([once] * len(tiny_items))
    stacked = encoder(batch.input_ids, patch_embeds=same, patch_attention=rows).last_hidden_state
    real = ~batch.input_ids.eq(model.arch.pad_token_id)  # padded positions are masked later
    mask = torch.cat([torch.ones(len(tiny_items), embeds.shape[1] * embeds.shape[2],
                                 dtype=torch.bool), real], dim=1)  # fmt: skip
    torch.testing.assert_close(shared[mask], plain[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(stacked[mask], plain[mask], atol=1e-5, rtol=0)
