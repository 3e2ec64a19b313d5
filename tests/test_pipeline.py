"""pipeline.py on the tiny model: the Train tab's edited config becomes the round's recipe, the round
trains in a subprocess, its evals start by themselves, and progress is read back from runs/<id>/."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from formats import write_rows
from pipeline import JobBusy, JobManager
from training.config import load_recipe
from ui.services import Settings


def dpo_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"explain why question {i}"}],
             "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
             "rejected": [{"role": "assistant", "content": "Dear, how can I help you? Buy now!"}]}
            for i in range(n)]


def wait_for(job, timeout=300):
    deadline = time.monotonic() + timeout
    while job.running and time.monotonic() < deadline:
        job.process.wait(timeout=timeout)
    while job.running:  # the watcher thread records the return code right after wait() returns
        time.sleep(0.05)
    return job.returncode


def test_round_runs_the_edited_config_then_its_evals(tiny_model_dir, data_dir, tmp_path):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about the sea {i}"}) + "\n" for i in range(4)))
    settings = Settings(data_dir=data_dir, base_model=str(tiny_model_dir), eval_prompts=prompts,
                        eval_max_new_tokens=8)
    jobs = JobManager(settings)
    snapshot = write_rows(dpo_rows(6), data_dir / "snapshots" / "dpo-test.jsonl")
    config = load_recipe("dpo_qlora").with_overrides(base_model=str(tiny_model_dir), max_steps=2, lora_r=4,
                                                     load_in_4bit=False, max_length=64).validate()
    job = jobs.start_round(config, snapshot)
    with pytest.raises(JobBusy, match="already running"):
        jobs.start_round(config, snapshot)  # one subprocess at a time
    assert wait_for(job) == 0, jobs.log_text(job)
    written = yaml.safe_load((settings.runs_dir / job.round_id / "config.yaml").read_text())
    assert written["lora_r"] == 4 and written["max_steps"] == 2  # what the admin set, as the recipe
    round_info = json.loads((settings.checkpoints_dir / job.round_id / "round.json").read_text())
    assert round_info["config"]["lora_r"] == 4 and round_info["metrics"]["steps"] == 2
    assert [e["event"] for e in jobs.metrics(job.round_id)][0] == "start"
    evals = jobs.current  # a finished round queues its own evals
    assert evals.kind == "eval" and evals.round_id == job.round_id
    assert wait_for(evals) in (0, 1), jobs.log_text(evals)
    assert jobs.eval_progress(evals) == (4, 4)  # read back from runs/<id>/eval.metrics.jsonl
    report = json.loads((settings.checkpoints_dir / job.round_id / "eval.json").read_text())
    assert report["n_prompts"] == 4
    assert [r["round"] for r in jobs.past_runs()] == [job.round_id] and jobs.past_runs()[0]["state"] == "done"


def test_train_tab_knobs_become_a_checked_config(tiny_model_dir, data_dir):
    from training.config import knob_fields
    from ui.services import Services
    from ui.train import recipe_values, round_config

    services = Services(Settings(data_dir=data_dir, base_model=str(tiny_model_dir)), chat=None)
    values = [v["value"] if isinstance(v, dict) else v for v in recipe_values("sft_qlora")]
    method, knobs = values[0], values[1:]
    names = [f.name for f in knob_fields()]
    knobs[names.index("max_steps")] = 3.0  # gr.Number hands back floats
    config = round_config(services, "sft_qlora", method, "base", *knobs)
    assert (config.method, config.max_steps, config.loss_type) == ("sft", 3, "nll")
    assert config.base_model == str(tiny_model_dir) and config.init_adapter is None
    knobs[names.index("lora_r")] = 0  # out of its bounds: refused before any process starts
    with pytest.raises(ValueError, match="lora_r must be an integer from 1 to 256"):
        round_config(services, "sft_qlora", method, "base", *knobs)
    knobs[names.index("lora_r")] = None
    with pytest.raises(ValueError, match="LoRA rank is empty"):
        round_config(services, "sft_qlora", method, "base", *knobs)
