"""Loading, adapter switching and batched streaming on the tiny random model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from models.loading import ModelLoadError, adapter_fingerprint, load_base, resolve_base_model, validate_adapter_dir
from models.chat import ChatModel, SamplingParams

HELLO = [{"role": "user", "content": "hello how are you"}]


def direct_greedy(model, tokenizer, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy text straight from transformers' generate, bypassing ChatModel."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    end = next((i for i, t in enumerate(new) if t == tokenizer.eos_token_id), len(new))
    return tokenizer.decode(new[:end], skip_special_tokens=True)


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) B so it really changes outputs."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_base(str(model_dir), dtype="fp32")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1.0)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def chat(tiny_model_dir) -> ChatModel:
    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    return ChatModel(model, tokenizer, base_name=str(tiny_model_dir))


def test_resolve_rejects_bad_specs_with_one_line(tmp_path):
    for spec, expected in [
        ("no-such-thing", "unknown base model"),
        (str(tmp_path / "missing.gguf"), "GGUF file not found"),
        (str(tmp_path), "not a Hugging Face model dir"),
    ]:
        with pytest.raises(ModelLoadError, match=expected) as info:
            resolve_base_model(spec, tmp_path / "cache")
        assert "\n" not in str(info.value)


def test_a_gguf_is_parsed_once_during_conversion_and_gguf_is_left_as_it_was():
    import gguf

    from models.loading import embedded_gguf_path, gguf_parsed_once

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_parsed_once():
        first = gguf.GGUFReader(embedded_gguf_path())
        assert gguf.GGUFReader(str(embedded_gguf_path())) is first  # transformers opens it by str path
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)


def test_resolve_accepts_local_dir_and_hub_id(tiny_model_dir, tmp_path):
    assert resolve_base_model(str(tiny_model_dir), tmp_path) == str(tiny_model_dir)
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_stream_yields_growing_texts_for_each_row(chat):
    params = SamplingParams(temperature=0, max_new_tokens=12)
    snapshots = list(chat.stream([HELLO, [{"role": "user", "content": "the sea"}]], [None, None], params))
    assert len(snapshots) >= 3  # really streamed, not one final chunk
    final = snapshots[-1]
    assert len(final) == 2 and all(final)
    assert all(len(a) <= len(b) for a, b in zip(snapshots[0], final))


def test_generate_returns_what_the_stream_ends_with(chat):
    # generate() skips the streamer for speed; it must still cut each row at its own EOS
    params = SamplingParams(temperature=0, max_new_tokens=12)
    conversations = [HELLO, [{"role": "user", "content": "the sea and the long tide"}]]
    streamed = list(chat.stream(conversations, [None, None], params))[-1]
    assert chat.generate(conversations, [None, None], params) == streamed


def test_closing_a_stream_stops_decoding_and_frees_the_model(chat):
    # gradio closes the handler's generator on Stop or a closed tab; decoding must not go on
    # in the background on the shared weights once the lock is released
    long = SamplingParams(temperature=0, max_new_tokens=480)  # the tiny model allows 512 positions
    stream = chat.stream([HELLO], [None], long)
    next(stream), next(stream)
    stream.close()
    assert chat.scheduler.wait_idle(timeout=30)  # the row left the shared loop
    assert chat.scheduler.stats["steps"] < 100  # at its next step, not after 480 tokens
    # and the model serves the next request as if nothing had been cut short
    expected = direct_greedy(chat.model, chat.tokenizer, HELLO, 8)
    assert chat.generate([HELLO], [None], SamplingParams(temperature=0, max_new_tokens=8)) == [expected]


def test_greedy_generation_is_deterministic_and_seeded_sampling_repeats(chat):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    assert chat.generate([HELLO], [None], greedy) == chat.generate([HELLO], [None], greedy)
    sampled = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=7)
    assert chat.generate([HELLO], [None], sampled) == chat.generate([HELLO], [None], sampled)


def test_adapters_share_one_base_and_switch_per_row(chat, tiny_model_dir, tmp_path):
    params = SamplingParams(temperature=0, max_new_tokens=10)
    base_answer = chat.generate([HELLO], [None], params)[0]
    base_weights = sum(p.numel() for p in chat.model.parameters())
    fp = chat.ensure_adapter("r1", make_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    chat.ensure_adapter("r2", make_adapter(tiny_model_dir, tmp_path / "a2", seed=2))
    assert len(fp) == 16 and fp == adapter_fingerprint(tmp_path / "a1")
    # one copy of the base weights: only the small LoRA matrices were added
    added = sum(p.numel() for p in chat.model.parameters()) - base_weights
    assert 0 < added < base_weights / 4
    base, r1, r2 = chat.generate([HELLO, HELLO, HELLO], [None, "r1", "r2"], params)
    assert base == base_answer  # the __base__ row is untouched by adapters
    assert r1 != base and r2 != base and r1 != r2
    alone = chat.generate([HELLO], ["r1"], params)[0]
    assert alone == r1  # mixed batch gives the same answer as serving r1 alone


def test_unknown_adapter_is_refused(chat):
    with pytest.raises(ModelLoadError, match="not loaded"):
        list(chat.stream([HELLO], ["ghost"]))


def test_corrupt_adapter_dir_gives_clear_error(chat, tmp_path):
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    before = chat.generate([HELLO], [None], greedy)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ModelLoadError, match="no adapter_config.json"):
        chat.ensure_adapter("bad", bad)
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        validate_adapter_dir(bad)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ModelLoadError, match="no adapter weights"):
        chat.ensure_adapter("bad", bad)
    (bad / "adapter_model.safetensors").write_bytes(b"garbage bytes")
    with pytest.raises(ModelLoadError, match="cannot load adapter"):
        chat.ensure_adapter("bad", bad)
    assert "bad" not in chat.adapters
    # still serving, and nothing of the failed loads stuck to the weights
    assert chat.generate([HELLO], [None], greedy) == before == [direct_greedy(chat.model, chat.tokenizer, HELLO, 8)]


# ---------------------------------------------------------------- 4-bit (bitsandbytes NF4 on CPU)

def lora_grads(model, ids) -> dict[str, torch.Tensor]:
    """LoRA gradients of one train-mode forward + backward (LoRA B starts random so A gets gradients too)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.train()
    loss = peft_model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    return {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}


def test_4bit_forward_in_inference_mode_and_backward_in_training_mode(tiny_model_dir):
    import bitsandbytes as bnb

    full, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    ids = tokenizer(["hello how are you", "the sea and the sky"], return_tensors="pt", padding=True)["input_ids"]
    # inference mode: on avx512_bf16 CPUs this is where bitsandbytes repacks the weights for its CPU kernel
    served, _ = load_base(str(tiny_model_dir), dtype="fp32", load_in_4bit=True)
    assert not served.training
    with torch.inference_mode():
        reference, quantized = full(input_ids=ids).logits, served(input_ids=ids).logits
    assert quantized.shape == reference.shape == (*ids.shape, len(tokenizer))
    assert torch.isfinite(quantized).all()
    error = ((quantized - reference).norm() / reference.norm()).item()
    assert 0 < error < 0.25, error  # really quantized, and close to the full-precision model
    layer = next(m for m in served.modules() if isinstance(m, bnb.nn.Linear4bit))
    repacked = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert repacked == layer.support_avx512bf16_for_cpu  # the path this CPU takes was the one that ran

    # training mode: a model loaded for training runs inference (held-out evals) and then trains;
    # its gradients must equal those of a model that never ran in inference mode
    trained, _ = load_base(str(tiny_model_dir), dtype="fp32", load_in_4bit=True, for_training=True)
    with torch.inference_mode():
        assert torch.allclose(trained(input_ids=ids).logits, quantized, atol=1e-2)  # repacking rounds absmax to bf16
    grads = lora_grads(trained, ids)
    fresh = lora_grads(load_base(str(tiny_model_dir), dtype="fp32", load_in_4bit=True)[0], ids)
    assert grads.keys() == fresh.keys() and len(grads) == 2 * 7 * 2  # A and B of 7 linears in 2 layers
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name
        assert torch.allclose(grad, fresh[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_embedded_model_streams_real_answers_on_both_sides(embedded_model_dir):
    chat = ChatModel(*load_base(str(embedded_model_dir)), base_name="embedded")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    snapshots = list(chat.stream([question, question], [None, None], SamplingParams(temperature=0, max_new_tokens=24)))
    assert len(snapshots) > 3
    assert all("Paris" in text for text in snapshots[-1])
    assert all(0 < len(early) < len(final) for early, final in zip(snapshots[2], snapshots[-1]))
