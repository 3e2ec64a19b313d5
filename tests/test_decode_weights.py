"""The decode loop's copies of the weights (models/decode_weights.py: int8 for narrow steps, oneDNN-packed
for wider ones) and torch work on its own thread (models/own_thread.py): which calls take which copy, what
they compute, how close the real embedded model stays to bf16, and that loading leaves no OpenMP team behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import decode_weights
from models.chat import ChatModel, SamplingParams
from models.loading import load_base
from models.own_thread import on_own_thread
from tests.test_models import make_adapter

ROOT = Path(__file__).resolve().parent.parent
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
PROMPT = [{"role": "user", "content": "tell me about the sea"}]


def int8_reference(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The layer with its weight rounded to int8 per output channel, computed in fp32 from scratch."""
    w = layer.weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return x.float() @ (torch.round(w / scale).clamp(-127, 127) * scale).T


def test_only_the_prepared_thread_takes_int8_and_only_for_narrow_calls(tiny_model_dir):
    model, _ = load_base(str(tiny_model_dir), dtype="bf16")
    layer = model.model.layers[0].mlp.down_proj
    narrow, wide = torch.randn(1, 3, layer.in_features, dtype=torch.bfloat16), \
        torch.randn(2, 4, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = {"narrow": layer(narrow), "wide": layer(wide)}

        def on_the_loop_thread():
            with torch.inference_mode():  # thread-local, like the loop's own
                decode_weights.prepare(model, int8=True, packed=False)
                return layer(narrow), layer(wide)

        calls = decode_weights.stats["int8_calls"]
        int8_narrow, loop_wide = on_own_thread(on_the_loop_thread)
        assert decode_weights.stats["int8_calls"] == calls + 1  # the 3-row call; the 8-row one stayed bf16
        assert torch.equal(loop_wide, before["wide"])
        assert not torch.equal(int8_narrow, before["narrow"])
        assert torch.allclose(int8_narrow.float(), int8_reference(layer, narrow), rtol=0.02, atol=0.02)
        assert torch.equal(layer(narrow), before["narrow"])  # this thread never prepared: bf16 as before


PACKING = {name: decode_weights.packing_unsupported(torch.nn.Linear(64, 64).to(dtype))
           for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}


def packable(dtype: str):
    """A parameter that runs where oneDNN can pack `dtype` weights (bf16 needs AVX-512; fp32 runs on any x86)."""
    return pytest.param(dtype, marks=pytest.mark.skipif(PACKING[dtype] is not None, reason=f"{PACKING[dtype]}"))


@pytest.mark.parametrize("dtype", [packable("bf16"), packable("fp32")])
def test_packed_weights_compute_what_the_layer_computes_on_the_prepared_thread_only(tiny_model_dir, dtype):
    """Wide calls on the loop's thread read the oneDNN-packed copy: the same products as the layer's own
    weight (bit for bit in bf16), narrow calls still take int8, and a weight changed in place is packed again."""
    model, _ = load_base(str(tiny_model_dir), dtype=dtype)
    layer = model.model.layers[0].mlp.up_proj
    attention = model.model.layers[0].self_attn
    siblings = [attention.q_proj, attention.k_proj, attention.v_proj]  # one stacked product, three slices
    wide = torch.randn(2, 5, layer.in_features, dtype=model.dtype)
    with torch.inference_mode():
        own = layer(wide)
        own_siblings = [sibling(wide) for sibling in siblings]

        def on_the_loop_thread():
            with torch.inference_mode():
                decode_weights.prepare(model, int8=dtype == "bf16", packed=True)
                packed_siblings.extend(sibling(wide) for sibling in siblings)
                packed_out = layer(wide)
                layer.weight.mul_(2)  # what merging an adapter into the base does
                return packed_out, layer(wide)

        calls, packed_siblings = dict(decode_weights.stats), []
        packed_out, after_change = on_own_thread(on_the_loop_thread)
        assert decode_weights.stats["packed_calls"] == calls["packed_calls"] + 5
        assert decode_weights.stats["int8_calls"] == calls["int8_calls"]
        # bf16: the same products bit for bit; fp32: oneDNN may sum in another order
        same = torch.equal if dtype == "bf16" else lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        assert same(packed_out, own)
        assert all(same(packed, mine) for packed, mine in zip(packed_siblings, own_siblings))
        assert torch.allclose(after_change.float(), 2 * own.float(), rtol=0.02, atol=1e-3)  # not the stale copy
        assert same(layer(wide), after_change)  # this thread reads the layer's own (changed) weight


@pytest.mark.skipif(PACKING["bf16"] is not None, reason=f"{PACKING['bf16']}")
def test_the_shared_batch_decodes_the_same_answers_with_packed_weights(tiny_model_dir, tmp_path):
    """Four rows (base and adapter, prompts of different lengths) in the shared loop, with and without the
    packed copies, int8 off (so every step reads them): the greedy answers are the same, and the packed run
    really read the packed copies."""
    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="bf16"), base_name=str(tiny_model_dir))
    chat.ensure_adapter("r1", make_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    prompts = [[{"role": "user", "content": f"question {i} " + "word " * i}] for i in range(4)]
    adapters = [None, "r1"] * 2
    params = SamplingParams(temperature=0, max_new_tokens=16)

    def answers(packed: bool) -> list[str]:
        chat.packed_decode = packed
        try:
            return list(chat.stream(prompts, adapters, params))[-1]
        finally:
            chat.scheduler.close()
            chat._scheduler = None  # the next run starts its own loop, which prepares its own copies

    plain = answers(False)
    calls = decode_weights.stats["packed_calls"]
    packed = answers(True)
    assert decode_weights.stats["packed_calls"] > calls
    assert packed == plain and len(set(plain)) > 1


def test_the_decode_loop_reads_int8_and_generate_does_not(tiny_model_dir, tmp_path):
    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="bf16"), base_name=str(tiny_model_dir))
    chat.ensure_adapter("r1", make_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    chat.int8_decode = True
    calls = decode_weights.stats["int8_calls"]
    chat.generate([PROMPT], ["r1"], GREEDY)
    assert decode_weights.stats["int8_calls"] == calls
    side_by_side = list(chat.stream([PROMPT, PROMPT], [None, "r1"], GREEDY))[-1]
    assert decode_weights.stats["int8_calls"] > calls and all(side_by_side)
    chat.scheduler.close()


def test_int8_decode_stays_about_as_close_to_fp32_as_bf16_does_on_the_embedded_model(embedded_model_dir):
    """Teacher-forced over an answer the model wrote: at each position, does a step pick the same next
    token as the fp32 model? bf16 (what the app serves) is the yardstick; int8 steps may lose at most 5
    points more. Measured while this was built: bf16 0.962, int8 0.946 of 130 positions.

    fp32's picks come from one forward over the whole text: in fp32 that picks what one-token steps
    pick (all 130 positions, checked when this was written), at a twentieth of the time."""
    bf16 = ChatModel(*load_base(str(embedded_model_dir), dtype="bf16"), base_name="embedded")
    fp32 = ChatModel(*load_base(str(embedded_model_dir), dtype="fp32"), base_name="embedded")
    prompt = [{"role": "user", "content": "Write a short story about a lighthouse keeper and the sea."}]
    answer = bf16.generate([prompt], [None], SamplingParams(temperature=0, max_new_tokens=96))[0]
    ids = bf16.prompt_ids(prompt) + bf16.tokenizer(answer, add_special_tokens=False)["input_ids"]
    first = 8  # steps start after the first 8 tokens, read in one go

    def next_tokens(chat: ChatModel, int8: bool = False) -> list[int]:
        from transformers import DynamicCache

        if int8:
            decode_weights.prepare(chat.model, int8=True, packed=False)
        cache, picks = DynamicCache(), []
        with torch.inference_mode():
            chat.model(input_ids=torch.tensor([ids[:first]]), past_key_values=cache, use_cache=True)
            for token in ids[first:]:  # one row per step: the narrow path
                logits = chat.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
                picks.append(int(logits[0, -1].argmax()))
        return picks

    def teacher_forced(chat: ChatModel) -> list[int]:  # position i's pick: the next token after ids[:i + 1]
        with torch.inference_mode():
            return chat.model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()[first:]

    reference = on_own_thread(lambda: teacher_forced(fp32))
    calls = decode_weights.stats["int8_calls"]
    plain, int8 = on_own_thread(lambda: next_tokens(bf16)), on_own_thread(lambda: next_tokens(bf16, int8=True))
    assert decode_weights.stats["int8_calls"] - calls >= len(int8) * 7  # every step's linear layers took int8
    assert len(reference) == len(int8) > 60

    def agreement(picks: list[int]) -> float:
        return sum(a == b for a, b in zip(picks, reference)) / len(reference)

    assert agreement(int8) >= agreement(plain) - 0.05, f"fp32's next token: int8 {agreement(int8):.3f}, " \
        f"bf16 {agreement(plain):.3f} of {len(reference)} positions"


COUNT_TEAMS = """
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import torch
from models.own_thread import on_own_thread
def threads():  # the OS threads Python did not start: torch's, OpenMP's
    return len(os.listdir("/proc/self/task")) - threading.active_count()
def parallel_work():  # big enough that torch runs it on all its threads
    x = torch.randn(1024, 1024)
    return float((x @ x).abs().amax(dim=1).sum())
torch.ones(1).add_(1)
before = threads()
on_own_thread(parallel_work)
deadline = time.monotonic() + 30
while threads() != before and time.monotonic() < deadline:  # the ended thread's workers exit just after it
    time.sleep(0.01)
after_own_thread = threads()
parallel_work()
print(json.dumps({"before": before, "own_thread": after_own_thread, "direct": threads(),
                  "torch_threads": torch.get_num_threads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc (Linux)")
def test_parallel_work_on_its_own_thread_leaves_no_openmp_team_behind():
    """What ChatModel.load and ensure_adapter rely on: torch work run through on_own_thread leaves no
    OpenMP workers on the caller, where the same work run directly leaves torch_threads - 1 of them
    (and the decode loop's workers then stop spinning: models/own_thread.py has the figures)."""
    out = subprocess.run([sys.executable, "-c", COUNT_TEAMS, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["own_thread"] == counts["before"], counts
    assert counts["direct"] == counts["before"] + counts["torch_threads"] - 1, counts  # the control


@pytest.mark.skipif(PACKING["fp32"] is not None, reason=f"{PACKING['fp32']}")
def test_the_start_line_says_which_copies_serve_which_steps(tiny_model_dir):
    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))
    line = decode_weights.choose(chat, int8=True, packed=True)
    assert "no int8 copies (the model is float32; int8 decode needs bf16)" in line  # asked for, and why not
    assert "oneDNN-packed copies for every step" in line and not chat.int8_decode and chat.packed_decode
    if PACKING["bf16"] is None:
        bf16 = ChatModel(*load_base(str(tiny_model_dir), dtype="bf16"), base_name=str(tiny_model_dir))
        line = decode_weights.choose(bf16, int8=True, packed=True)
        assert f"int8 copies for steps of at most {decode_weights.NARROW_ROWS} rows" in line
        assert "oneDNN-packed copies for wider steps" in line


@pytest.mark.skipif(PACKING["fp32"] is not None, reason=f"{PACKING['fp32']}")
def test_copies_that_memory_cannot_hold_are_not_made_and_the_start_line_says_why(tiny_model_dir):
    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))
    size = sum(m.weight.numel() * 4 for m in chat.model.modules() if type(m) is torch.nn.Linear)  # fp32 copies
    line = decode_weights.choose(chat, int8=True, packed=True, available=decode_weights.MEMORY_HEADROOM + size)
    assert chat.packed_decode and "oneDNN-packed copies for every step" in line  # fits, just
    line = decode_weights.choose(chat, int8=True, packed=True, available=decode_weights.MEMORY_HEADROOM + size - 1)
    assert not chat.packed_decode
    assert "no packed copies (they would take" in line and "--no-packed-decode skips them" in line, line
    if PACKING["bf16"] is None:  # int8 is decided first: it stays when only both would not fit
        bf16 = ChatModel(*load_base(str(tiny_model_dir), dtype="bf16"), base_name=str(tiny_model_dir))
        int8 = sum(m.weight.numel() for m in bf16.model.modules() if type(m) is torch.nn.Linear)
        line = decode_weights.choose(bf16, int8=True, packed=True,
                                     available=decode_weights.MEMORY_HEADROOM + int8 + 2 * int8 - 1)
        assert bf16.int8_decode and not bf16.packed_decode, line


@pytest.mark.skipif(PACKING["fp32"] is not None, reason=f"{PACKING['fp32']}")
def test_the_evals_read_the_own_weights_when_memory_cannot_hold_packed_copies(tiny_model_dir, monkeypatch, capsys):
    """The evals' process packs its own copies beside the app's: with too little memory free it says so in its
    log and generates from the model's own weights. (free_memory is the OS's figure, set here.)"""
    from evals.report import pack_weights

    size = decode_weights.copy_bytes(load_base(str(tiny_model_dir), dtype="fp32")[0], "packed")
    for free, packed in ((decode_weights.MEMORY_HEADROOM + size - 1, False), (decode_weights.MEMORY_HEADROOM + size, True)):
        chat = ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))
        monkeypatch.setattr(decode_weights, "free_memory", lambda free=free: free)
        on_own_thread(lambda: pack_weights(chat))
        assert any(getattr(m, "_packed_copy", None) is not None for m in chat.model.modules()) == packed
        logged = capsys.readouterr().out
        assert ("evals: no packed copies of the weights (they would take" in logged) == (not packed), logged


def test_free_memory_is_the_containers_when_its_limit_is_lower(tmp_path):
    """Inside a container (a Space), psutil sees the host: the cgroup's limit less its use, not counting
    the inactive file cache, is what the copies may take. Files laid out as cgroup v2 and v1 mount them."""
    v2, v1, unlimited = tmp_path / "v2", tmp_path / "v1" / "memory", tmp_path / "unlimited"
    for directory in (v2, v1, unlimited):
        directory.mkdir(parents=True)
    (v2 / "memory.max").write_text("1000000000\n")
    (v2 / "memory.current").write_text("600000000\n")
    (v2 / "memory.stat").write_text("anon 400000000\nfile 200000000\ninactive_file 100000000\n")
    (v1 / "memory.limit_in_bytes").write_text("2000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("1500000000\n")
    (v1 / "memory.stat").write_text("cache 300000000\ntotal_inactive_file 250000000\n")
    (unlimited / "memory.max").write_text("max\n")
    (unlimited / "memory.current").write_text("600000000\n")
    (unlimited / "memory.stat").write_text("inactive_file 0\n")
    assert decode_weights.free_memory(v2) == 500_000_000
    assert decode_weights.free_memory(tmp_path / "v1") == 750_000_000
    host = decode_weights.free_memory(tmp_path / "none")  # no cgroup files: what psutil reports
    assert host > 750_000_000 and abs(decode_weights.free_memory(unlimited) - host) < 2**28
