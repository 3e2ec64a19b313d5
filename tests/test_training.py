"""Training rounds end to end on the tiny random Llama: the CLI, the checkpoint it writes, refusals,
cancel and crash safety. One slow test runs a real 4-bit round on the embedded SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.__main__ import main
from training.config import RoundConfig, load_recipe
from models.loading import load_base
from models.chat import ChatModel, SamplingParams
from training.registry import list_checkpoints, remove_stale_temp_dirs, temp_dir_for
from training.callbacks import make_callbacks, watch_heldout
from training.run import plan_steps, run_round

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "hello how are you"}]


def dpo_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"explain why question {i}"}],
             "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
             "rejected": [{"role": "assistant", "content": "Dear, how can I help you? Buy now!"}]}
            for i in range(n)]


def sft_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"write a poem {i}"},
                          {"role": "assistant", "content": "The sea and the sky and the wind."}]}
            for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def lora_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}


def events(log_dir: Path) -> list[dict]:
    path = log_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tiny_args(model_dir: Path, data: Path, out: Path, round_id: str, *extra) -> list:
    return ["run", "--data", data, "--out", out, "--base-model", model_dir, "--round-id", round_id,
            "--max-length", "64", "--batch-size", "2", "--cache-dir", out.parent / "cache", *extra]


@pytest.fixture(scope="module")
def dpo_round(tiny_model_dir, tmp_path_factory):
    """One DPO round through the CLI, shared by the checkpoint tests."""
    root = tmp_path_factory.mktemp("dpo-round")
    data = write_jsonl(root / "pairs.jsonl", dpo_rows(8))
    out = root / "checkpoints"
    result = cli(*tiny_args(tiny_model_dir, data, out, "r1", "--method", "dpo", "--steps", "3", "--no-4bit",
                            "--lr", "5e-3"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


# ---------------------------------------------------------------- config and pure logic

def test_recipes_load_and_overrides_validate():
    dpo, sft = load_recipe("dpo_qlora"), load_recipe("sft_qlora")
    assert (dpo.method, dpo.loss_type, dpo.load_in_4bit) == ("dpo", "sigmoid", True)
    assert (sft.method, sft.loss_type) == ("sft", "nll")
    changed = dpo.with_overrides(lora_r=8, max_steps=None, target_modules="q_proj, v_proj")
    assert changed.lora_r == 8 and changed.max_steps == dpo.max_steps
    assert changed.target_modules == ("q_proj", "v_proj") and changed.to_dict()["target_modules"] == ["q_proj", "v_proj"]
    assert RoundConfig(**{**changed.to_dict(), "target_modules": ("q_proj",)}).validate()
    with pytest.raises(ValueError, match="learning_rate must be in"):
        dpo.with_overrides(learning_rate=5).validate()
    with pytest.raises(ValueError, match="loss_type for sft must be one of nll, dft"):
        dpo.with_overrides(method="sft").validate()
    with pytest.raises(ValueError, match="unknown config field"):
        dpo.with_overrides(epochs=3)
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*dpo_qlora"):
        load_recipe("nope")


def test_plan_steps_caps_epochs_at_max_steps():
    config = RoundConfig(batch_size=4, num_epochs=2, max_steps=60)
    assert plan_steps(28, config) == 14  # 7 batches x 2 epochs
    assert plan_steps(1000, config) == 60
    assert plan_steps(1000, config.with_overrides(max_steps=0)) == 500
    assert plan_steps(3, config.with_overrides(grad_accum=2, num_epochs=1)) == 1


def test_early_stopping_rule_on_a_fake_eval_sequence():
    assert watch_heldout([0.69], patience=2) == (0, False)
    assert watch_heldout([0.69, 0.60, 0.62], patience=2) == (1, False)
    assert watch_heldout([0.69, 0.60, 0.62, 0.61], patience=2) == (1, True)  # two evals without a new best
    assert watch_heldout([0.69, 0.60, 0.62, 0.55, 0.70], patience=2) == (3, False)  # the counter resets
    assert watch_heldout([0.69, 0.70, 0.80, 0.90], patience=0) == (0, False)  # 0 = never stop
    assert watch_heldout([0.69, 0.689], patience=1, min_delta=0.01) == (0, True)


def test_heldout_callback_stops_and_restores_the_best_step(tmp_path):
    from transformers import TrainerControl, TrainerState

    from formats import ProgressFiles as RunFiles

    _, heldout = make_callbacks(RunFiles(tmp_path, "fake"), patience=2)
    model, state, control = torch.nn.Linear(2, 2), TrainerState(), TrainerControl()
    for step, loss in [(5, 0.69), (10, 0.55), (15, 0.58), (20, 0.61)]:
        state.global_step = step
        with torch.no_grad():
            model.weight.fill_(step)  # the weights "as trained" up to this step
        heldout.on_evaluate(None, state, control, metrics={"eval_loss": loss}, model=model)
        assert control.should_training_stop == (step == 20)
    assert heldout.stopped_early and heldout.best()["step"] == 10
    heldout.restore(model)
    assert torch.all(model.weight == 10)


# ---------------------------------------------------------------- real rounds on the tiny model

def test_cli_dpo_round_writes_a_complete_checkpoint(dpo_round):
    out, result = dpo_round
    final = out / "r1"
    assert result.stdout.strip().splitlines()[-1] == str(final)
    assert sorted(p.name for p in out.iterdir()) == [".runs", "r1"]  # no temp dir left
    assert sorted(p.name for p in final.iterdir()) == ["adapter", "round.json"]
    info = json.loads((final / "round.json").read_text())
    assert info["round_id"] == "r1" and info["method"] == "dpo" and info["reference"] == "base"
    assert len(info["snapshot"]["sha256"]) == 64 and info["snapshot"]["rows"] == 8
    assert info["quantization"] == "none" and info["config"]["max_steps"] == 3 and info["recipe"] == "dpo_qlora"
    assert set(info["versions"]) >= {"torch", "transformers", "trl", "peft", "bitsandbytes"}
    m = info["metrics"]
    assert m["steps"] == 3 and m["n_train"] + m["n_holdout"] == 8 and m["n_holdout"] >= 1
    assert m["best_step"] in (3,) and m["best_eval_loss"] is not None
    assert m["heldout_reward_accuracy"] is not None and m["heldout_reward_margin"] is not None
    assert m["peak_memory"]["rss_max_mb"] > 50 and m["duration_s"] > 0
    assert info["started_at"] <= info["finished_at"]
    lora_b = [v for k, v in lora_tensors(final / "adapter").items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # lora_B starts at zero: training moved it

    log_dir = out / ".runs" / "r1"
    rows = events(log_dir)
    assert [r["event"] for r in rows][0] == "start" and rows[-1]["event"] == "end"
    assert [r["step"] for r in rows if r["event"] == "log"] == [1, 2, 3]
    assert all(r["max_steps"] == 3 and r["elapsed_s"] is not None for r in rows)
    assert any(r["event"] == "eval" and r["eval_loss"] is not None and "eval_rewards/margins" in r for r in rows)
    assert rows[-1]["checkpoint"] == str(final)
    status = json.loads((log_dir / "status.json").read_text())
    assert status["state"] == "done" and status["checkpoint"] == str(final) and status["error"] is None
    assert "step 3/3" in (log_dir / "train.log").read_text()


def test_checkpoint_loads_in_chat_model_and_generates(dpo_round, tiny_model_dir):
    out, _ = dpo_round
    checkpoint = list_checkpoints(out)[0]
    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    chat = ChatModel(model, tokenizer, base_name=str(tiny_model_dir))
    chat.ensure_adapter("r1", checkpoint.adapter_dir)
    texts = chat.generate([HELLO, HELLO], ["r1", None], SamplingParams(temperature=0, max_new_tokens=6))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_list_command_prints_the_round(dpo_round, capsys):
    out, _ = dpo_round
    assert main(["list", "--out", str(out)]) == 0
    assert "r1\tdpo" in capsys.readouterr().out


def test_cli_sft_round(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(6))
    out = tmp_path / "checkpoints"
    result = cli(*tiny_args(tiny_model_dir, data, out, "s1", "--method", "sft", "--steps", "2", "--no-4bit",
                            "--lr", "5e-3"))
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "s1" / "round.json").read_text())
    assert info["method"] == "sft" and info["reference"] is None and info["config"]["loss_type"] == "nll"
    assert info["metrics"]["heldout_token_accuracy"] is not None
    assert any(v.abs().max() > 0 for k, v in lora_tensors(out / "s1" / "adapter").items() if "lora_B" in k)


def test_4bit_round_and_continue_from_its_checkpoint(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(6))
    out = tmp_path / "checkpoints"
    config = RoundConfig(base_model=str(tiny_model_dir), max_steps=2, max_length=64, batch_size=2,
                         learning_rate=5e-3, lora_r=4)
    first = run_round(config, data, out, round_id="q1", cache_dir=tmp_path / "cache")
    assert json.loads((first / "round.json").read_text())["quantization"].startswith("nf4")

    second = run_round(config.with_overrides(init_adapter=str(first), lora_r=8, load_in_4bit=False), data, out,
                       round_id="q2", cache_dir=tmp_path / "cache")
    info = json.loads((second / "round.json").read_text())
    assert info["init_adapter"]["round_id"] == "q1" and info["reference"] == "init_adapter"
    assert info["lora"]["r"] == 4  # the continued adapter keeps its own shape
    before, after = lora_tensors(first / "adapter"), lora_tensors(second / "adapter")
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    assert [c.round_id for c in list_checkpoints(out)] == ["q1", "q2"]


def test_4bit_falls_back_to_plain_lora_when_bitsandbytes_fails(tiny_model_dir, tmp_path, monkeypatch):
    import training.run as run

    real = run.load_base

    def no_bnb(path, *, dtype="auto", load_in_4bit=False):
        if load_in_4bit:
            raise RuntimeError("bitsandbytes has no kernel for this machine")
        return real(path, dtype=dtype)

    monkeypatch.setattr(run, "load_base", no_bnb)
    config = RoundConfig(base_model=str(tiny_model_dir), max_steps=1, max_length=64, batch_size=2)
    final = run_round(config, write_jsonl(tmp_path / "p.jsonl", dpo_rows(4)), tmp_path / "ck", round_id="f1")
    quantization = json.loads((final / "round.json").read_text())["quantization"]
    assert quantization == "none (fallback: RuntimeError: bitsandbytes has no kernel for this machine)"


# ---------------------------------------------------------------- refusals: exit 2, nothing written

@pytest.mark.parametrize("case, expected", [
    ("too_few", "has 3 rows; a dpo round needs at least 4"),
    ("missing_columns", "lacks column(s) chosen, rejected"),
    ("not_json", "cannot read"),
    ("missing_file", "snapshot file not found"),
    ("not_messages", "must be a non-empty list of {role, content} messages"),
    ("bad_base", "unknown base model 'no-such-model'"),
    ("bad_config", "lora_r must be a positive integer"),
])
def test_bad_input_exits_2_with_one_line_and_no_checkpoint(case, expected, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    base = str(tiny_model_dir)
    extra: list[str] = []
    if case == "too_few":
        write_jsonl(data, dpo_rows(3))
    elif case == "missing_columns":
        write_jsonl(data, [{"prompt": r["prompt"]} for r in dpo_rows(5)])
    elif case == "not_json":
        data.write_text("this is not json\n{{{\n")
    elif case == "not_messages":
        write_jsonl(data, [{**r, "chosen": "plain text"} for r in dpo_rows(5)])
    elif case in ("bad_base", "bad_config"):
        write_jsonl(data, dpo_rows(5))
        base = "no-such-model" if case == "bad_base" else base
        extra = ["--lora-r", "0"] if case == "bad_config" else []
    out = tmp_path / "checkpoints"
    code = main(["run", "--method", "dpo", "--data", str(data), "--out", str(out), "--base-model", base,
                 "--round-id", "bad", "--no-4bit", "--cache-dir", str(tmp_path / "cache"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (out / "bad").exists() and not temp_dir_for(out, "bad").exists()
    status = out / ".runs" / "bad" / "status.json"
    if status.exists():  # refused before the log dir existed for a bad config
        assert json.loads(status.read_text())["state"] == "failed"


def test_existing_checkpoint_is_never_overwritten(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(5))
    out = tmp_path / "checkpoints"
    (out / "taken").mkdir(parents=True)
    (out / "taken" / "round.json").write_text("{}")
    code = main(["run", "--data", str(data), "--out", str(out), "--round-id", "taken", "--no-4bit"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "taken" / "round.json").read_text() == "{}"


# ---------------------------------------------------------------- crash and cancel safety

def test_sweep_keeps_temp_dirs_of_live_rounds(tmp_path):
    live, dead = temp_dir_for(tmp_path, "live"), temp_dir_for(tmp_path, "dead")
    for path, pid in ((live, os.getpid()), (dead, 2**22 + 12345)):  # above pid_max: never a live process
        path.mkdir()
        (path / ".pid").write_text(str(pid))
    assert remove_stale_temp_dirs(tmp_path) == [dead]
    assert live.is_dir() and not dead.exists()


def start_long_round(tiny_model_dir, tmp_path, round_id):
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(8))
    out = tmp_path / "checkpoints"
    args = tiny_args(tiny_model_dir, data, out, round_id, "--steps", "2000", "--epochs", "1000", "--no-4bit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_dir = out / ".runs" / round_id
    deadline = time.time() + 180
    while not any(e["event"] == "log" for e in events(log_dir)):
        assert process.poll() is None, f"round exited early with {process.returncode}"
        assert time.time() < deadline, "no training step within 180 s"
        time.sleep(0.2)
    assert temp_dir_for(out, round_id).is_dir()  # mid-round: only the temp dir exists
    return process, out, log_dir


def test_sigkill_mid_round_leaves_no_checkpoint(tiny_model_dir, tmp_path):
    process, out, _ = start_long_round(tiny_model_dir, tmp_path, "killed")
    before = list_checkpoints(out)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "killed").exists()
    assert list_checkpoints(out) == before == []
    assert remove_stale_temp_dirs(out) == [temp_dir_for(out, "killed")]  # the next round sweeps it
    assert not temp_dir_for(out, "killed").exists()


def test_sigterm_cancels_cleanly(tiny_model_dir, tmp_path):
    process, out, log_dir = start_long_round(tiny_model_dir, tmp_path, "cancelled")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not (out / "cancelled").exists() and not temp_dir_for(out, "cancelled").exists()
    status = json.loads((log_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and "SIGTERM" in status["error"]
    assert events(log_dir)[-1]["event"] == "error" and events(log_dir)[-1]["state"] == "cancelled"
    assert list_checkpoints(out) == []


# ---------------------------------------------------------------- the real embedded model

@pytest.mark.slow
def test_embedded_model_4bit_dpo_round(embedded_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(6))
    config = RoundConfig(base_model=str(embedded_model_dir), max_steps=2, batch_size=2, max_length=96)
    final = run_round(config, data, tmp_path / "checkpoints", round_id="e1")
    info = json.loads((final / "round.json").read_text())
    assert info["quantization"].startswith("nf4") and info["metrics"]["steps"] == 2
    model, tokenizer = load_base(str(embedded_model_dir), dtype="fp32")
    chat = ChatModel(model, tokenizer)
    chat.ensure_adapter("e1", final / "adapter")
    texts = chat.generate([HELLO], ["e1"], SamplingParams(temperature=0, max_new_tokens=8))
    assert texts[0].strip()
