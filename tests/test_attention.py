"""models/attention.py: one-token steps of a grouped-query model with the query heads packed onto their
key/value heads give what transformers' own `sdpa` gives, and padded rows still ignore their padding."""

from __future__ import annotations

import torch

from models.attention import NAME
from models.loading import load_base


def decode(model, prompts: list[list[int]], steps: int = 4) -> torch.Tensor:
    """Left-padded batch, prefill then `steps` greedy one-token steps (as the decode loop feeds them);
    the logits of every step, (rows, steps + 1, vocab)."""
    from transformers import DynamicCache

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cache, logits = DynamicCache(), []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True)
        for _ in range(steps):
            logits.append(out.logits[:, -1])
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
            out = model(input_ids=out.logits[:, -1:].argmax(-1), attention_mask=None if mask.all() else mask,
                        position_ids=mask.sum(-1, keepdim=True) - 1, past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1)


def test_one_token_steps_equal_sdpa_and_padded_rows_equal_their_rows_alone(tiny_model_dir):
    model, _ = load_base(str(tiny_model_dir), dtype="fp32")
    assert model.config._attn_implementation == NAME  # load_base switched it (a grouped model on the CPU)
    assert model.model.layers[0].self_attn.num_key_value_groups > 1
    short, long = list(range(5, 12)), list(range(20, 39))
    packed_alone = decode(model, [short])
    packed_batch = decode(model, [short, long])
    model.set_attn_implementation("sdpa")
    sdpa_alone = decode(model, [short])
    # the same attention as transformers' own, up to the rounding of another SDPA kernel
    torch.testing.assert_close(packed_alone, sdpa_alone, rtol=0, atol=1e-5)
    # the padded row reads only its own tokens: it equals the row decoded alone
    torch.testing.assert_close(packed_batch[0], packed_alone[0], rtol=0, atol=1e-5)
    assert decode(model, [short, long])[0].allclose(packed_batch[0], atol=1e-5)


def test_bf16_one_token_steps_are_the_same_bits_as_sdpa(tiny_model_dir):
    model, _ = load_base(str(tiny_model_dir), dtype="bf16")
    prompts = [list(range(5, 12)), list(range(3, 10))]  # one length: no mask, the path this module changes
    packed = decode(model, prompts)
    model.set_attn_implementation("sdpa")
    assert torch.equal(packed, decode(model, prompts))
