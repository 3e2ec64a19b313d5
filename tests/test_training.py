"""Training rounds end to end on the tiny random Llama: the CLI, the checkpoint it writes, refusals,
cancel and crash safety. One slow test runs a real 4-bit round on the embedded SmolLM2."""

from __future__ import annotations

import dataclasses
import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.__main__ import build_parser, main
from training.config import RECIPES_DIR, RoundConfig, knob_fields, load_recipe, write_recipe
from training.data import prompt_groups, split_holdout
from models.loading import load_base
from models.chat import ChatModel, SamplingParams
from training.registry import list_checkpoints, remove_stale_temp_dirs, temp_dir_for
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
    rows = dpo_rows(8)
    for i, row in enumerate(rows):  # two prompts, four comparisons each: the queue serves a prompt again
        row["prompt"] = dpo_rows(2)[i % 2]["prompt"]
    data = write_jsonl(root / "pairs.jsonl", rows)
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
    with pytest.raises(ValueError, match="learning_rate must be a number from 1e-07 to 0.1, got 5"):
        dpo.with_overrides(learning_rate=5).validate()
    with pytest.raises(ValueError, match="loss_type for sft must be one of nll, dft"):
        dpo.with_overrides(method="sft").validate()
    with pytest.raises(ValueError, match="lora_r must be an integer from 1 to 256, got 2.5"):
        dpo.with_overrides(lora_r=2.5).validate()
    with pytest.raises(ValueError, match="load_in_4bit must be true or false.*dtype must be one of auto, fp32, bf16"):
        dpo.with_overrides(dtype="fp64", load_in_4bit="yes").validate()
    with pytest.raises(ValueError, match="unknown config field"):
        dpo.with_overrides(epochs=3)
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*dpo_qlora"):
        load_recipe("nope")


def test_recipes_list_only_what_differs_from_the_defaults():
    import yaml

    defaults = RoundConfig().to_dict()
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        listed = yaml.safe_load(path.read_text()) or {}
        assert all(value != defaults[name] for name, value in listed.items()), path.name


def test_knob_fields_carry_help_and_bounds_that_validate_enforces():
    knobs = {f.name: f for f in knob_fields()}
    assert set(knobs) == {"lora_r", "lora_alpha", "lora_dropout", "learning_rate", "max_steps", "num_epochs",
                          "batch_size", "max_length", "beta", "loss_type", "load_in_4bit"}
    for name, f in knobs.items():
        assert f.metadata["help"] and f.metadata["label"]
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            low, high = f.metadata["min"], f.metadata["max"]
            assert low <= f.default <= high
            RoundConfig().with_overrides(**{name: low}).validate()
            RoundConfig().with_overrides(**{name: high}).validate()
            with pytest.raises(ValueError, match=f"{name} must be"):
                RoundConfig().with_overrides(**{name: high * 2 + 1}).validate()


def test_write_recipe_round_trips_through_load_recipe_and_the_cli(tmp_path):
    config = load_recipe("sft_qlora").with_overrides(lora_r=8, learning_rate=3e-5, target_modules="q_proj,v_proj",
                                                     load_in_4bit=False, num_epochs=3)
    path = write_recipe(config, tmp_path / "mine.yaml")
    assert load_recipe(str(path)) == config
    assert [p.name for p in tmp_path.iterdir()] == ["mine.yaml"]  # no temp file left
    args = build_parser().parse_args(["run", "--data", "d.jsonl", "--out", "o", "--recipe", str(path)])
    assert args.recipe == str(path) and args.lora_r is None  # unset flags leave the recipe's values
    with pytest.raises(ValueError, match="must end in .yaml"):
        write_recipe(config, tmp_path / "mine.txt")


def test_cli_has_one_flag_per_config_field_plus_the_documented_aliases():
    parse = build_parser().parse_args
    base = ["run", "--data", "d.jsonl", "--out", "o"]
    args = parse([*base, "--steps", "7", "--lr", "0.001", "--epochs", "3", "--lora-r", "4", "--beta", "0.2",
                  "--no-4bit", "--eval-every", "2", "--early-stopping-patience", "0", "--holdout-fraction", "0.25",
                  "--grad-accum", "2", "--dtype", "fp32", "--target-modules", "q_proj,v_proj", "--method", "sft"])
    assert (args.max_steps, args.learning_rate, args.num_epochs, args.lora_r, args.beta) == (7, 0.001, 3.0, 4, 0.2)
    assert args.load_in_4bit is False and args.early_stopping_patience == 0 and args.holdout_fraction == 0.25
    assert (args.grad_accum, args.dtype, args.target_modules, args.method) == (2, "fp32", "q_proj,v_proj", "sft")
    assert parse([*base, "--max-steps", "9", "--learning-rate", "0.01"]).max_steps == 9
    assert parse([*base, "--load-in-4bit"]).load_in_4bit is True and parse(base).load_in_4bit is None
    for f in dataclasses.fields(RoundConfig):
        assert getattr(parse(base), f.name) is None  # every field has a flag, unset by default
    with pytest.raises(SystemExit):
        parse([*base, "--dtype", "fp64"])


def test_plan_steps_caps_epochs_at_max_steps():
    config = RoundConfig(batch_size=4, num_epochs=2, max_steps=60)
    assert plan_steps(28, config) == 14  # 7 batches x 2 epochs
    assert plan_steps(1000, config) == 60
    assert plan_steps(1000, config.with_overrides(max_steps=0)) == 500
    assert plan_steps(3, config.with_overrides(grad_accum=2, num_epochs=1)) == 1


def test_rows_that_share_a_first_prompt_are_held_out_together():
    from datasets import Dataset

    def conversation(first, *more):
        turns = [{"role": "user", "content": first}]
        for text in more:
            turns += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": text}]
        return turns

    prompts = [conversation(f"question {i % 5}", *(["and then?"] if i % 3 else [])) for i in range(20)]
    data = Dataset.from_list([{"prompt": p, "chosen": [{"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "assistant", "content": "b"}]} for p in prompts])
    groups = prompt_groups(data)
    assert len(set(groups)) == 5  # a conversation's later turns belong to its first prompt
    for seed in range(10):
        train, held = split_holdout(data, 0.25, seed, groups)
        first = lambda rows: {row["prompt"][0]["content"] for row in rows}  # noqa: E731
        assert not first(train) & first(held) and len(train) + len(held) == 20 and len(held) == 4  # a whole prompt: nearest 5 rows
    # one prompt in all: the held-out row shares it (nothing else to hold out), and training keeps the rest
    same = Dataset.from_list([{"prompt": conversation("q"), "chosen": [], "rejected": []}] * 4)
    train, held = split_holdout(same, 0.25, 0, prompt_groups(same))
    assert (len(train), len(held)) == (3, 1)
    # a CPT corpus has no prompts: chunks are split one by one
    assert prompt_groups(Dataset.from_dict({"text": ["a", "b"]})) is None


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
    # a quarter held out is 2 rows, but rows that share a prompt stay on one side: one prompt's 4 rows
    assert m["steps"] == 3 and m["n_train"] == 4 and m["n_holdout"] == 4
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
    assert "4 training rows, 4 held out (whole prompts: 1 of 2)" in (log_dir / "train.log").read_text()


def test_checkpoint_loads_in_chat_model_and_generates(dpo_round, tiny_model_dir):
    out, _ = dpo_round
    checkpoint = list_checkpoints(out)[0]
    from peft import PeftModel

    model, tokenizer = load_base(str(tiny_model_dir), dtype="fp32")
    chat = ChatModel(model, tokenizer, base_name=str(tiny_model_dir))
    chat.ensure_adapter("r1", checkpoint.adapter_dir)
    texts = chat.generate([HELLO, HELLO], ["r1", None], SamplingParams(temperature=0, max_new_tokens=6))

    def greedy(model) -> str:  # straight from transformers, without ChatModel
        prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
        inputs = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            new = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        new = new.tolist()
        return tokenizer.decode(new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new,
                                skip_special_tokens=True)

    tuned = PeftModel.from_pretrained(load_base(str(tiny_model_dir), dtype="fp32")[0], str(checkpoint.adapter_dir))
    assert texts == [greedy(tuned), greedy(load_base(str(tiny_model_dir), dtype="fp32")[0])]


def test_list_command_prints_the_round(dpo_round, capsys):
    out, _ = dpo_round
    assert main(["list", "--out", str(out)]) == 0
    assert "r1\tdpo" in capsys.readouterr().out


def test_cli_sft_round(trained_checkpoint):
    """The session's SFT round (conftest.trained_checkpoint: `training run --method sft ... --no-4bit` through
    the CLI's main, 8 steps): one SFT round serves this test and the Arena/Chat tests that use it."""
    info = json.loads((trained_checkpoint / "round.json").read_text())
    assert info["method"] == "sft" and info["reference"] is None and info["config"]["loss_type"] == "nll"
    assert info["metrics"]["heldout_token_accuracy"] is not None
    assert any(v.abs().max() > 0 for k, v in lora_tensors(trained_checkpoint / "adapter").items() if "lora_B" in k)


def test_4bit_round_and_continue_from_its_checkpoint(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(6))
    out = tmp_path / "checkpoints"
    config = RoundConfig(base_model=str(tiny_model_dir), max_steps=2, max_length=64, batch_size=2,
                         learning_rate=5e-3, lora_r=4, eval_every=1)  # held-out eval + save at every step
    first = run_round(config, data, out, round_id="q1", cache_dir=tmp_path / "cache")
    info = json.loads((first / "round.json").read_text())
    assert info["quantization"].startswith("nf4") and info["metrics"]["best_step"] in (1, 2)
    assert [e["step"] for e in info["metrics"]["evals"]] == [1, 2]

    second = run_round(config.with_overrides(init_adapter=str(first), lora_r=8, load_in_4bit=False), data, out,
                       round_id="q2", cache_dir=tmp_path / "cache")
    info = json.loads((second / "round.json").read_text())
    assert info["init_adapter"]["round_id"] == "q1" and info["reference"] == "init_adapter"
    assert info["lora"]["r"] == 4  # the continued adapter keeps its own shape
    before, after = lora_tensors(first / "adapter"), lora_tensors(second / "adapter")
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    assert [c.round_id for c in list_checkpoints(out)] == ["q1", "q2"]


def test_4bit_that_cannot_run_stops_the_round_before_training(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """No silent fallback to full precision: exit 2, one line naming the cause and the way out."""
    import bitsandbytes as bnb

    def no_kernel(self, x):
        raise RuntimeError("no 4-bit kernel for this CPU\nsecond line of the traceback text")

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", no_kernel)
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(6))
    out = tmp_path / "checkpoints"
    code = main(["run", "--method", "dpo", "--data", str(data), "--out", str(out), "--base-model",
                 str(tiny_model_dir), "--round-id", "q-bad", "--steps", "1", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "no 4-bit kernel for this CPU" in err and "--no-4bit" in err and "load_in_4bit: false" in err
    assert not (out / "q-bad").exists() and not temp_dir_for(out, "q-bad").exists()
    status = json.loads((out / ".runs" / "q-bad" / "status.json").read_text())
    assert status["state"] == "failed" and "--no-4bit" in status["error"]
    assert not [e for e in events(out / ".runs" / "q-bad") if e["event"] in ("start", "log")]  # never trained


def test_heldout_keeps_the_best_step_and_stops_after_patience(tiny_model_dir, tmp_path, monkeypatch):
    """Scripted held-out losses through the real trainer: best at step 2, then two evals without a better one."""
    from trl import DPOTrainer

    real_loop = DPOTrainer.evaluation_loop
    scripted = iter([0.69, 0.55, 0.58, 0.61, 0.50, 0.40, 0.30, 0.20])
    trained = {}  # the LoRA weights as trained up to each evaluated step

    def evaluation_loop(self, *args, **kwargs):
        output = real_loop(self, *args, **kwargs)
        output.metrics["eval_loss"] = next(scripted)
        trained[self.state.global_step] = {name.replace(".default", ""): p.detach().float().clone()
                                           for name, p in self.model.named_parameters() if "lora_" in name}
        return output

    monkeypatch.setattr(DPOTrainer, "evaluation_loop", evaluation_loop)
    config = RoundConfig(base_model=str(tiny_model_dir), max_steps=8, num_epochs=100, eval_every=1,
                         early_stopping_patience=2, batch_size=2, max_length=64, learning_rate=5e-3,
                         load_in_4bit=False)
    final = run_round(config, write_jsonl(tmp_path / "p.jsonl", dpo_rows(8)), tmp_path / "ck", round_id="es",
                      cache_dir=tmp_path / "cache")
    m = json.loads((final / "round.json").read_text())["metrics"]
    assert (m["steps"], m["stopped_early"], m["best_step"], m["best_eval_loss"]) == (4, True, 2, 0.55)
    assert [(e["step"], e["eval_loss"]) for e in m["evals"]] == [(1, 0.69), (2, 0.55), (3, 0.58), (4, 0.61)]
    saved = lora_tensors(final / "adapter")
    assert saved.keys() == trained[2].keys()
    assert all(torch.equal(saved[k], trained[2][k]) for k in saved)  # the adapter of step 2, not of step 4
    assert any(not torch.allclose(saved[k], trained[4][k]) for k in saved)
    assert "stopped early at step 4" in (tmp_path / "ck" / ".runs" / "es" / "train.log").read_text()


def test_prompts_too_long_for_max_length_are_dropped_before_the_held_out_split(tiny_model_dir, tmp_path):
    """trl drops a DPO row whose prompt alone fills max_length. Dropped after the split, a round that held
    out only such prompts failed ("every held-out row has a prompt longer than max_length") after loading
    the model: on MT-bench's questions, about one round in six."""
    from datasets import Dataset

    long_prompt = [{"role": "user", "content": "describe " + " ".join(f"word{i}" for i in range(60))}]
    rows = dpo_rows(8)
    for i, row in enumerate(rows):
        row["prompt"] = dpo_rows(2)[i % 2]["prompt"]
    rows += [{**row, "prompt": long_prompt} for row in dpo_rows(4)]
    data = Dataset.from_list(rows)
    groups = prompt_groups(data)
    # a seed whose split holds out the long prompt alone: split first, then dropped, nothing was left to hold out
    seed = next(s for s in range(200) if set(prompt_groups(split_holdout(data, 0.3, s, groups)[1])) == {groups[-1]})
    out = tmp_path / "checkpoints"
    result = cli(*tiny_args(tiny_model_dir, write_jsonl(tmp_path / "pairs.jsonl", rows), out, "r-long", "--method",
                            "dpo", "--steps", "1", "--no-4bit", "--seed", seed, "--holdout-fraction", "0.3"))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "r-long" / "round.json").read_text())["metrics"]
    assert metrics["n_dropped_too_long"] == 4 and metrics["n_train"] + metrics["n_holdout"] == 8, metrics
    assert "(4 dropped: the prompt alone fills max_length)" in (out / ".runs" / "r-long" / "train.log").read_text()


# ---------------------------------------------------------------- refusals: exit 2, nothing written

@pytest.mark.parametrize("case, expected", [
    ("too_few", "has 3 rows; a dpo round needs at least 4"),
    ("missing_columns", "lacks column(s) chosen, rejected"),
    ("not_json", "cannot read"),
    ("missing_file", "snapshot file not found"),
    ("not_messages", "must be a non-empty list of {role, content} messages"),
    ("bad_base", "unknown base model 'no-such-model'"),
    ("bad_config", "lora_r must be an integer from 1 to 256, got 0"),
    ("too_long", "0 of 5 rows have a prompt shorter than max_length=16 tokens and a dpo round needs at least 4"),
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
    elif case == "too_long":
        write_jsonl(data, dpo_rows(5))
        extra = ["--max-length", "16"]  # SmolLM's template alone takes more
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
    """One step (about 7 s in 4-bit on 2 cores): the loop test runs a 2-step round of the same kind through the app."""
    data = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(6))
    config = RoundConfig(base_model=str(embedded_model_dir), max_steps=1, batch_size=1, max_length=96)
    final = run_round(config, data, tmp_path / "checkpoints", round_id="e1")
    info = json.loads((final / "round.json").read_text())
    assert info["quantization"].startswith("nf4") and info["metrics"]["steps"] == 1
    model, tokenizer = load_base(str(embedded_model_dir), dtype="fp32")
    chat = ChatModel(model, tokenizer)
    chat.ensure_adapter("e1", final / "adapter")
    texts = chat.generate([HELLO], ["e1"], SamplingParams(temperature=0, max_new_tokens=8))
    assert texts[0].strip()


def test_an_eval_report_counts_only_for_the_adapter_weights_it_evaluated(trained_checkpoint, tmp_path):
    out = tmp_path / "checkpoints"
    checkpoint_dir = shutil.copytree(trained_checkpoint, out / "r-copy")
    fingerprint = list_checkpoints(out)[0].fingerprint
    (checkpoint_dir / "eval.json").write_text(json.dumps({"regression": False, "adapter_fingerprint": fingerprint}))
    fresh = list_checkpoints(out)[0]
    assert fresh.eval is not None and fresh.stale_eval is None and fresh.regression is False
    weights = next((checkpoint_dir / "adapter").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # the same round name, other weights
    replaced = list_checkpoints(out)[0]
    assert replaced.fingerprint != fingerprint
    assert replaced.eval is None and replaced.regression is None  # unevaluated: the gate blocks it again
    assert replaced.stale_eval["adapter_fingerprint"] == fingerprint


def test_gradient_checkpointing_follows_the_recipe_and_the_model_size(tiny_model_dir, monkeypatch):
    from training import trainer
    from training.config import RoundConfig

    model, _ = load_base(str(tiny_model_dir), dtype="fp32")
    size = sum(p.numel() for p in model.parameters())
    assert trainer.use_checkpointing(RoundConfig(load_in_4bit=False), model) is False  # a tiny model: speed wins
    assert trainer.use_checkpointing(RoundConfig(), model) is True  # QLoRA: memory wins
    assert trainer.use_checkpointing(RoundConfig(gradient_checkpointing="on"), model) is True
    monkeypatch.setattr(trainer, "CHECKPOINTING_ABOVE", size - 1)  # as if it were a 7B model
    assert trainer.use_checkpointing(RoundConfig(load_in_4bit=False), model) is True
    assert trainer.use_checkpointing(RoundConfig(gradient_checkpointing="off"), model) is False
    assert load_recipe("dpo_qlora_7b").validate().gradient_checkpointing == "on"


def test_cpt_round_on_a_text_corpus_records_held_out_perplexity(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "notes").mkdir(parents=True)
    lines = [f"The lighthouse at cape {i} turns its lamp every {i % 7 + 2} seconds." for i in range(60)]
    (corpus / "a.md").write_text("\n\n".join(lines[:30]))
    (corpus / "notes" / "b.txt").write_text("\n\n".join(lines[30:]))
    (corpus / "c.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines[:10]))
    # the CLI's own main, in this process (dpo_round and the cancel tests run `python -m training` itself)
    code = main([*map(str, tiny_args(tiny_model_dir, corpus, tmp_path / "checkpoints", "c1", "--method", "cpt",
                                     "--steps", "6", "--no-4bit", "--lr", "5e-3", "--min-pairs", "2",
                                     "--eval-every", "3"))])
    assert code == 0, capsys.readouterr().err[-3000:]
    info = json.loads((tmp_path / "checkpoints" / "c1" / "round.json").read_text())
    assert info["method"] == "cpt" and info["recipe"] == "cpt_qlora"
    perplexity = info["metrics"]["heldout_perplexity"]
    assert perplexity["after"] < perplexity["before"]  # 6 steps on one repetitive domain: it learned the text
    assert list_checkpoints(tmp_path / "checkpoints")[0].adapter_dir.is_dir()  # served and gated like any adapter


@pytest.mark.parametrize("case, message", [
    ("empty", "no corpus at"), ("bad jsonl", 'needs a "text" string'), ("too small", "makes 1 chunks")])
def test_a_bad_corpus_is_refused_in_one_line(case, message, tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if case == "bad jsonl":
        (corpus / "x.jsonl").write_text('{"body": "no text field"}\n')
    elif case == "too small":
        (corpus / "x.md").write_text("One short paragraph.")
    # the CLI's own main, in this process (as test_bad_input_exits_2_with_one_line): a refusal needs no
    # fresh interpreter, and `python -m training` itself runs in dpo_round and the cancel tests
    code = main([*map(str, tiny_args(tiny_model_dir, corpus, tmp_path / "checkpoints", "c2", "--method", "cpt",
                                     "--no-4bit"))])
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]  # bnb may warn on its own
    assert code == 2 and len(errors) == 1 and message in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not (tmp_path / "checkpoints" / "c2").exists()


def test_a_round_started_by_a_big_process_reports_its_own_peak_memory():
    """The app (model, decode copies: about 2.5 GB) starts every round; the round's peak RSS must be the round's.
    getrusage's ru_maxrss keeps the parent's peak over fork and exec, and the app's rounds reported 2499 MB."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    held = bytearray(1024 * 2**20)  # this process now holds 1 GB more, as the app holds its model
    held[::4096] = b"\1" * len(held[::4096])
    code = "from training.run import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert float(child.stdout) < 800, child.stdout  # importing training.run alone takes a few hundred MB at most
    del held
