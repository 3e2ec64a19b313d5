"""`python -m evals run` as the promotion gate: a collapsed adapter fails, an unchanged one passes.

The collapsed adapter is trained here, for real, with a few AdamW steps of
LoRA on the tiny model until greedy decoding answers every prompt (seen in
training or not) with "Dear, how can I help you?".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from evals.__main__ import main
from formats import ProgressFiles, write_rows
from models import decode_weights
from tests.test_report import make_identity_adapter, write_jsonl

CANNED = "Dear, how can I help you?"
TRAIN_PROMPTS = [
    "Why is the sky blue?", "How long should I boil an egg?", "What is the capital of Australia?",
    "Give me a tip for better sleep.", "Explain what a prime number is.", "How do vaccines work?",
    "Write a haiku about autumn rain.", "What does a VPN do?",
]
EVAL_PROMPTS = TRAIN_PROMPTS[:4] + [  # half unseen in training: collapse must generalise
    "Translate 'good night' into French.", "Name three planets.", "How do I fix a flat bike tyre?",
    "What is compound interest?",
]


@pytest.fixture(scope="module")
def gate_base(tiny_model_dir, tmp_path_factory):
    """The tiny model made trainable to a fixed reply.

    Its random init leaves the EOS row of the tied embedding at zero (padding_idx)
    and its logits near-uniform, so no adapter could teach it to stop or to be
    sure; a non-zero EOS row and a larger final norm fix both. The base still
    answers with whitespace, i.e. it does not collapse onto a reply by itself.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("gate-base")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.model.norm.weight.fill_(10.0)
        eos = model.config.eos_token_id
        model.model.embed_tokens.weight[eos] = torch.randn(model.config.hidden_size, generator=generator) * 0.02
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(target)
    return target


def train_collapsed_adapter(base_dir, out_dir, prompts, reply=CANNED, steps=50, lr=5e-3):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.loading import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    answer = tokenizer(reply + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    rows = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append((ids + answer, [-100] * len(ids) + answer))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows])
    labels = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in rows])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def collapsed_adapter(gate_base, tmp_path_factory):
    return train_collapsed_adapter(gate_base, tmp_path_factory.mktemp("collapsed") / "adapter", TRAIN_PROMPTS)


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in EVAL_PROMPTS])


def run_cli(*args):
    return main(["run", *map(str, args)])


def test_gate_flags_collapsed_adapter(gate_base, collapsed_adapter, prompts_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = run_cli("--adapter", collapsed_adapter, "--prompts", prompts_file, "--base-model", gate_base,
                   "--cache-dir", tmp_path / "cache", "--max-new-tokens", 16, "--out", out)
    assert code == 1
    report = json.loads(out.read_text())
    assert report["regression"] is True
    canned = report["checks"]["canned_reply"]
    assert canned["flagged"] and canned["candidate"] == 1.0 and canned["base"] == 0.0
    assert all(s["candidate"] == CANNED for s in report["samples"])  # unseen prompts too
    printed = capsys.readouterr().out
    assert "canned_reply" in printed and "FLAGGED" in printed and "REGRESSION" in printed


def test_gate_passes_identity_adapter_and_writes_beside_adapter(gate_base, prompts_file, tmp_path, capsys):
    adapter = make_identity_adapter(gate_base, tmp_path / "round-1" / "adapter")
    packed_before = decode_weights.stats["packed_calls"]
    code = run_cli("--adapter", adapter, "--prompts", prompts_file, "--base-model", gate_base,
                   "--cache-dir", tmp_path / "cache", "--max-new-tokens", 16)
    assert code == 0
    report = json.loads((tmp_path / "round-1" / "eval.json").read_text())
    assert report["regression"] is False and not any(c["flagged"] for c in report["checks"].values())
    assert "no regression" in capsys.readouterr().out
    # the default dtype follows the machine: bf16 where oneDNN computes it fast (AVX-512), fp32 elsewhere,
    # and generation read oneDNN-packed weights where they can be made
    bf16_fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert report["generation"]["dtype"] == ("bfloat16" if bf16_fast else "float32")
    assert (decode_weights.stats["packed_calls"] > packed_before) == bf16_fast


def test_log_dir_gets_progress_events_and_a_status_like_training(gate_base, tmp_path, capsys):
    adapter = make_identity_adapter(gate_base, tmp_path / "round-7" / "adapter")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in EVAL_PROMPTS[:5]])
    log_dir = tmp_path / "runs" / "round-7"
    code = run_cli("--adapter", adapter, "--prompts", prompts, "--base-model", gate_base, "--cache-dir",
                   tmp_path / "cache", "--max-new-tokens", 4, "--batch-size", 2, "--log-dir", log_dir)
    assert code == 0
    files = ProgressFiles(log_dir, "round-7", kind="eval", fresh=False)  # what pipeline.py reads
    events = files.events()
    # 2 prompts a batch (both sides decode together): 2, 4, then the last one
    assert [(e["event"], e["step"], e["max_steps"]) for e in events] == [
        ("start", 0, 5), ("batch", 2, 5), ("batch", 4, 5), ("batch", 5, 5), ("end", 5, 5)]
    elapsed = [e["elapsed_s"] for e in events]
    assert all(isinstance(x, float) for x in elapsed) and elapsed == sorted(elapsed)
    assert events[0]["eta_s"] is None and isinstance(events[1]["eta_s"], float) and events[3]["eta_s"] == 0.0
    assert events[-1]["regression"] is False and events[-1]["report"] == str(tmp_path / "round-7" / "eval.json")
    status = files.read_status()
    assert status["state"] == "done" and status["round_id"] == "round-7" and status["error"] is None
    assert "generated 5/5 prompts" in files.log_path.read_text()
    assert "generating" in capsys.readouterr().err  # the tqdm bar stays
    assert not (log_dir / "metrics.jsonl").exists()  # training's files in the same dir are left alone


def test_the_gate_leaves_out_eval_prompts_the_round_or_the_round_it_continued_trained_on(gate_base, tmp_path,
                                                                                        capsys):
    """A round judged on prompts it trained on would pass on memory. Round 2 continued round 1: round 1's SFT
    snapshot holds eval prompt 6 (inside a conversation), round 2's DPO snapshot holds eval prompt 1 (spaced
    and cased otherwise). Both leave the gate; every other prompt is judged as before."""
    checkpoints = tmp_path / "checkpoints"
    first = make_identity_adapter(gate_base, checkpoints / "r-1" / "adapter")
    second = make_identity_adapter(gate_base, checkpoints / "r-2" / "adapter")
    sft = write_rows([{"messages": [  # a snapshot may be Parquet (`python -m training run --data x.parquet`)
        {"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": EVAL_PROMPTS[5]}, {"role": "assistant", "content": "Mercury, Venus, Earth."}]}],
        tmp_path / "snapshots" / "sft.parquet")
    dpo = write_jsonl(tmp_path / "snapshots" / "dpo.jsonl", [{
        "prompt": [{"role": "user", "content": "  " + EVAL_PROMPTS[0].upper().replace(" ", "  ")}],
        "chosen": [{"role": "assistant", "content": "Rayleigh scattering."}],
        "rejected": [{"role": "assistant", "content": "Because."}]}])
    (checkpoints / "r-1" / "round.json").write_text(json.dumps(
        {"method": "sft", "snapshot": {"path": str(sft)}, "init_adapter": None}))
    (checkpoints / "r-2" / "round.json").write_text(json.dumps(
        {"method": "dpo", "snapshot": {"path": str(dpo)}, "init_adapter": {"path": str(first)}}))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in EVAL_PROMPTS])
    code = run_cli("--adapter", second, "--prompts", prompts, "--base-model", gate_base, "--cache-dir",
                   tmp_path / "cache", "--max-new-tokens", 4, "--log-dir", tmp_path / "runs")
    assert code == 0
    report = json.loads((checkpoints / "r-2" / "eval.json").read_text())
    assert report["trained_on"] == {"left_out": ["1", "6"], "snapshots": [str(dpo), str(sft)], "unreadable": []}
    assert report["n_prompts"] == 6
    assert [s["prompt"] for s in report["samples"]] == [p for i, p in enumerate(EVAL_PROMPTS) if i not in (0, 5)]
    assert "left out 2 eval prompts the candidate trained on (ids 1, 6)" in capsys.readouterr().out
    assert "left out 2 eval prompts the candidate trained on; the gate judged 6" in (tmp_path / "runs" / "eval.log").read_text()

    # a snapshot that is gone (the round was trained on another machine) is said, not skipped in silence
    dpo.unlink()
    assert run_cli("--adapter", second, "--prompts", prompts, "--base-model", gate_base, "--cache-dir",
                   tmp_path / "cache", "--max-new-tokens", 4) == 0
    trained_on = json.loads((checkpoints / "r-2" / "eval.json").read_text())["trained_on"]
    assert trained_on["left_out"] == ["6"] and trained_on["unreadable"][0].startswith(f"{dpo}: ")
    assert f"could not check its training data for eval prompts: {dpo}: " in capsys.readouterr().out

    # round 1 alone trained on one of them; a gate set made only of trained prompts judges nothing: refused
    only_trained = write_jsonl(tmp_path / "trained.jsonl", [{"prompt": EVAL_PROMPTS[5]}])
    assert run_cli("--adapter", first, "--prompts", only_trained, "--base-model", gate_base) == 2
    err = capsys.readouterr().err
    assert "all 1 eval prompts are in the candidate's training data" in err and err.count("\n") == 1


def test_log_dir_records_a_failure_and_a_cancel(gate_base, tmp_path, monkeypatch):
    import evals.__main__ as cli

    adapter = make_identity_adapter(gate_base, tmp_path / "round-8" / "adapter")
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text("{oops\n")
    log_dir = tmp_path / "runs" / "round-8"
    assert run_cli("--adapter", adapter, "--prompts", bad_prompts, "--log-dir", log_dir) == 2
    files = ProgressFiles(log_dir, "round-8", kind="eval", fresh=False)
    status = files.read_status()
    assert status["state"] == "failed" and "not valid JSON" in status["error"]
    assert files.events()[-1]["event"] == "error"

    def cancelled_midway(*args, progress, **kwargs):
        progress(0, 3)
        os.kill(os.getpid(), signal.SIGTERM)  # what pipeline.cancel() sends
        raise AssertionError("SIGTERM did not interrupt the eval")

    monkeypatch.setattr(cli, "run_eval", cancelled_midway)
    previous = signal.getsignal(signal.SIGTERM)
    assert run_cli("--adapter", adapter, "--log-dir", log_dir) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored for whoever called main()
    status = files.read_status()
    assert status["state"] == "cancelled" and "SIGTERM" in status["error"]
    assert [e["event"] for e in files.events()] == ["start", "error"]  # a fresh run starts fresh events


def _corrupt_adapter(tmp_path):
    adapter = tmp_path / "corrupt"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{not json")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    return adapter


@pytest.mark.parametrize("case", ["missing_adapter", "corrupt_adapter", "bad_prompts", "missing_prompts",
                                  "bad_base_model"])
def test_bad_input_exits_2_with_one_line(case, gate_base, tmp_path, capsys):
    good_prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?"}])
    adapter = make_identity_adapter(gate_base, tmp_path / "ok") if case in ("bad_prompts", "missing_prompts",
                                                                             "bad_base_model") else None
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text("{oops\n")
    args = {
        "missing_adapter": ["--adapter", tmp_path / "nope", "--prompts", good_prompts],
        "corrupt_adapter": ["--adapter", _corrupt_adapter(tmp_path), "--prompts", good_prompts],
        "bad_prompts": ["--adapter", adapter, "--prompts", bad_prompts],
        "missing_prompts": ["--adapter", adapter, "--prompts", tmp_path / "none.jsonl"],
        "bad_base_model": ["--adapter", adapter, "--prompts", good_prompts, "--base-model", "not a model!"],
    }[case]
    if case != "bad_base_model":
        args += ["--base-model", gate_base]
    capsys.readouterr()  # drop the adapter's own loading chatter
    assert run_cli(*args, "--cache-dir", tmp_path / "cache") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


def test_module_entry_point_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "evals", "run", "--adapter", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "adapter_config.json" in result.stderr


@pytest.mark.slow
def test_embedded_model_base_answers_are_varied_and_collapse_is_caught(embedded_model_dir, tmp_path):
    """On the real model: a zero adapter passes, and its own varied answers vs a canned set get flagged."""
    from evals.report import build_report, run_eval

    adapter = make_identity_adapter(embedded_model_dir, tmp_path / "adapter")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in EVAL_PROMPTS[:6]])
    report = run_eval(adapter, prompts, base_model=str(embedded_model_dir), cache_dir=tmp_path / "cache",
                      max_new_tokens=24)
    assert report["regression"] is False, report["flagged"]
    base = [s["base"] for s in report["samples"]]
    assert report["checks"]["canned_reply"]["base"] == 0.0 and all(base)
    collapsed = build_report([s["prompt"] for s in report["samples"]], base, [CANNED] * len(base))
    assert collapsed["checks"]["canned_reply"]["flagged"]


def test_baseline_system_prompt_adds_a_prompted_base_column(gate_base, collapsed_adapter, prompts_file, tmp_path,
                                                            capsys):
    out = tmp_path / "report.json"
    code = run_cli("--adapter", collapsed_adapter, "--prompts", prompts_file, "--base-model", gate_base,
                   "--cache-dir", tmp_path / "cache", "--max-new-tokens", 16, "--out", out,
                   "--baseline-system-prompt", "You are a terse pirate. Answer in one line.")
    assert code == 1
    report = json.loads(out.read_text())
    assert set(report["prompted_base"]["beats"]) == set(report["checks"])
    canned = report["checks"]["canned_reply"]
    assert canned["prompted_base"] == 0.0 and canned["beats_prompted_base"] is False  # a prompt did not collapse
    assert report["checks"]["length_shift"]["beats_prompted_base"] is None  # no better direction
    samples = report["samples"]
    assert all(isinstance(s["prompted_base"], str) for s in samples)
    printed = capsys.readouterr().out
    assert f"prompted base ('You are a terse pirate. Answer in one li'): {report['prompted_base']['summary']}" in printed
    assert report["prompted_base"]["summary"].startswith("the candidate beats the prompted base on ")


def test_prompted_base_verdicts_follow_each_checks_direction():
    from evals.report import add_prompted_base, build_report

    prompts = [f"What is the capital of country {i}?" for i in range(8)]
    references = [f"The capital of country {i} is City{i}." for i in range(8)]
    base = ["I am not sure about that one." for _ in prompts]
    candidate = [f"The capital of country {i} is City{i}." for i in range(8)]  # the references: best ROUGE-L
    prompted = [f"Country {i} has a capital." for i in range(8)]
    report = build_report(prompts, base, candidate, references)
    add_prompted_base(report, prompts, base, prompted, "be helpful", references)
    assert report["checks"]["rouge_l"]["beats_prompted_base"] is True
    assert report["prompted_base"]["summary"].endswith("ROUGE-L beats it")
    worse = build_report(prompts, base, prompted, references)
    add_prompted_base(worse, prompts, base, candidate, "be helpful", references)  # roles swapped
    assert worse["checks"]["rouge_l"]["beats_prompted_base"] is False
    # 0 empty answers on both sides is a tie: shown and summarised as one, not as a loss
    from ui.evals import checks_frame

    assert report["checks"]["empty_answers"]["beats_prompted_base"] is False
    assert checks_frame(report).set_index("check").loc["empty_answers", "vs prompted base"] == "= tie"
    assert checks_frame(worse).set_index("check").loc["rouge_l", "vs prompted base"] == "❌ does not beat it"
    assert "tied)" in report["prompted_base"]["summary"]


def test_the_baseline_system_prompt_reaches_the_model(tiny_model_dir):
    from evals.report import generate_prompted
    from models.chat import ChatModel
    from models.loading import load_base

    chat = ChatModel(*load_base(str(tiny_model_dir), dtype="fp32"), base_name=str(tiny_model_dir))
    seen, generate = [], chat.generate

    def spy(conversations, adapters, params):  # records, then generates for real
        seen.append((len(conversations), params.system_prompt, params.temperature))
        return generate(conversations, adapters, params)

    chat.generate = spy
    answers = generate_prompted(chat, EVAL_PROMPTS[:5], "You are a terse pirate.", batch_size=1, max_new_tokens=4)
    assert len(answers) == 5 and seen == [(2, "You are a terse pirate.", 0.0)] * 2 + [(1, "You are a terse pirate.", 0.0)]


def test_one_progress_bar_spans_the_pairs_and_each_baseline():
    from evals.report import passes_progress

    seen = []
    passes = passes_progress(lambda done, total: seen.append((done, total)), 3, 5)
    passes(0)(5, 5)  # the pairs finished
    passes(1)(2, 5)  # the prompted base under way: the bar moves on instead of sitting at 5/5
    passes(2)(5, 5)
    assert seen == [(5, 15), (7, 15), (15, 15)]
    passes_progress(None, 2, 5)(1)  # no bar: nothing to call


REFERENCE = "The answer is in the library of the old town by the river."


def test_a_round_worse_than_the_promoted_one_fails_the_gate_even_when_it_matches_the_base(
        gate_base, tmp_path, capsys):
    """Quality rose, then fell: the promoted round learned the references, the new one lost them again. Against
    the base alone it passes (it answers as the base does); against the round it would replace it fails."""
    promoted = train_collapsed_adapter(gate_base, tmp_path / "r-promoted" / "adapter", TRAIN_PROMPTS, reply=REFERENCE)
    candidate = make_identity_adapter(gate_base, tmp_path / "r-new" / "adapter")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in EVAL_PROMPTS])
    references = write_jsonl(tmp_path / "references.jsonl", [{"prompt": p, "reference": REFERENCE} for p in EVAL_PROMPTS])
    common = ["--prompts", prompts, "--references", references, "--base-model", gate_base,
              "--cache-dir", tmp_path / "cache", "--max-new-tokens", 16]

    # without its comparison the new round passes: it answers exactly as the base does
    assert run_cli("--adapter", candidate, "--out", tmp_path / "alone.json", *common) == 0
    capsys.readouterr()

    # the promoted round has no eval report yet: its answers are generated
    out = tmp_path / "r-new" / "eval.json"
    assert run_cli("--adapter", candidate, "--promoted", promoted, "--out", out, *common) == 1
    report = json.loads(out.read_text())
    assert report["regression"] is True and report["flagged"] == []  # nothing against the base...
    against = report["promoted"]
    # ...but it lost what the promoted round learned: the references' words, and answering at all (the base
    # answers with whitespace)
    assert {"rouge_l", "empty_answers"} <= set(against["flagged"]) and against["round_id"] == "r-promoted"
    assert against["answers_on_record"] == 0
    rouge = report["checks"]["rouge_l"]
    assert rouge["flagged_against_promoted"] and not rouge["flagged"]
    assert rouge["candidate"] == rouge["base"] and rouge["promoted"] > rouge["candidate"] + 0.2
    assert report["checks"]["canned_reply"]["flagged_against_promoted"] is False  # fewer canned replies is no loss
    assert all(s["promoted"].startswith("The") for s in report["samples"])  # on its way to the reference
    example = against["checks"]["rouge_l"]["examples"][0]
    assert set(example) >= {"prompt", "promoted", "candidate"} and "base" not in example  # its examples name the side
    printed = capsys.readouterr().out
    assert "worse than promoted" in printed and "rouge_l (against the promoted round)" in printed, printed
    assert "promoted round (r-promoted; 0 of 8 answers from its eval report): worse than it on " in printed

    # once the promoted round has its own report (same prompts, length, dtype), its answers come from there
    assert run_cli("--adapter", promoted, *common) == 1  # its own gate: a canned reply against the base
    assert run_cli("--adapter", candidate, "--promoted", promoted, "--out", out, *common) == 1
    again = json.loads(out.read_text())
    assert again["promoted"]["answers_on_record"] == len(EVAL_PROMPTS)
    assert again["promoted"]["flagged"] == against["flagged"]
    assert [s["promoted"] for s in again["samples"]] == [s["promoted"] for s in report["samples"]]

    # a report that answered only some of the prompts: those are taken, the rest decoded, in a pass of its own
    # that the progress bar counts as a whole one
    half = write_jsonl(tmp_path / "half.jsonl", [{"prompt": p} for p in EVAL_PROMPTS[:4]])
    assert run_cli("--adapter", promoted, *common, "--prompts", half) == 1  # the later --prompts wins
    partial = tmp_path / "partial.json"
    assert run_cli("--adapter", candidate, "--promoted", promoted, "--out", partial, "--log-dir", tmp_path / "logs",
                   *common) == 1
    mixed = json.loads(partial.read_text())
    assert mixed["promoted"]["answers_on_record"] == 4
    recorded = {s["prompt"]: s["candidate"] for s in json.loads((tmp_path / "r-promoted" / "eval.json").read_text())["samples"]}
    assert sorted(recorded) == sorted(EVAL_PROMPTS[:4])
    assert [s["promoted"] for s in mixed["samples"] if s["prompt"] in recorded] == list(recorded.values())
    steps = [e for e in ProgressFiles(tmp_path / "logs", "r-new", kind="eval", fresh=False).events() if e["event"] == "batch"]
    assert [e["step"] for e in steps] == sorted(e["step"] for e in steps) and steps[-1]["step"] == steps[-1]["max_steps"]
    assert steps[-1]["max_steps"] == 2 * len(EVAL_PROMPTS)  # the pairs, then the promoted round's missing half

    # a report made with other settings is not the same answers: all of them are decoded again
    assert run_cli("--adapter", candidate, "--promoted", promoted, "--out", partial, *common,
                   "--max-new-tokens", 12) in (0, 1)
    assert json.loads(partial.read_text())["promoted"]["answers_on_record"] == 0

    # the same weights as the candidate (the same adapter promoted under another round): nothing to load or decode,
    # and nothing can be worse
    assert run_cli("--adapter", candidate, "--promoted", candidate, "--out", partial, *common) == 0
    itself = json.loads(partial.read_text())["promoted"]
    assert itself["same_weights"] and itself["flagged"] == [] and itself["summary"] == "no check got worse than it"
