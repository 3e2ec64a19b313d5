"""pipeline.py on the tiny model: the Train tab's edited config becomes the round's recipe, the round
trains in a subprocess, its evals start by themselves, and progress is read back from runs/<id>/."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from formats import write_rows
from pipeline import BACKGROUND_NICE, JobBusy, JobManager
from training.config import load_recipe
from ui.settings import Settings


def dpo_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"explain why question {i}"}],
             "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
             "rejected": [{"role": "assistant", "content": "Dear, how can I help you? Buy now!"}]}
            for i in range(n)]


def wait_for(job, timeout=300):
    """The job's exit code, once the manager has acted on it (a round's evals started)."""
    assert job.handled.wait(timeout), f"{job.kind} {job.round_id} still running after {timeout} s"
    return job.returncode


def test_round_runs_the_edited_config_then_its_evals(tiny_model_dir, trained_checkpoint, data_dir, tmp_path):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about the sea {i}"}) + "\n" for i in range(4)))
    settings = Settings(data_dir=data_dir, base_model=str(tiny_model_dir), eval_prompts=prompts,
                        eval_max_new_tokens=8)
    # the current candidate, an earlier round on the same base: the new round's evals compare with it too
    shutil.copytree(trained_checkpoint, settings.checkpoints_dir / "r-trained")
    jobs = JobManager(settings, promoted=lambda: "r-trained")
    snapshot = write_rows(dpo_rows(6), data_dir / "snapshots" / "dpo-test.jsonl")
    config = load_recipe("dpo_qlora").with_overrides(base_model=str(tiny_model_dir), max_steps=2, lora_r=4,
                                                     load_in_4bit=False, max_length=64).validate()
    job = jobs.start_round(config, snapshot)
    # at the lowest CPU priority, as its own scheduling group too where Linux groups by session: while it
    # runs, annotators' generation keeps its speed (pipeline.yield_cpu_to_serving)
    assert os.getpriority(os.PRIO_PROCESS, job.process.pid) == BACKGROUND_NICE
    autogroup = Path(f"/proc/{job.process.pid}/autogroup")
    assert not autogroup.exists() or autogroup.read_text().split()[-1] == str(BACKGROUND_NICE), autogroup.read_text()
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
    # the promoted round's answers were generated (it has no report of its own), in a second pass on the bar
    assert report["promoted"]["round_id"] == "r-trained" and report["promoted"]["answers_on_record"] == 0
    assert [e["max_steps"] for e in jobs.progress(job.round_id, "eval").events() if e["event"] == "batch"][-1] == 8
    # the exit code is the report's verdict, with what got worse than the promoted round counted in it
    assert evals.returncode == (1 if report["flagged"] or report["promoted"]["flagged"] else 0)
    assert [r["round"] for r in jobs.past_runs()] == [job.round_id] and jobs.past_runs()[0]["state"] == "done"


def test_evals_compare_with_the_current_candidate_only_where_it_would_be_replaced(data_dir):
    current = {"id": None}
    jobs = JobManager(Settings(data_dir=data_dir, base_model="base-a"), promoted=lambda: current["id"])
    checkpoints = jobs.settings.checkpoints_dir
    for round_id, base, weights in (("r-1", "base-a", "adapter"), ("r-2", "base-a", "adapter"),
                                    ("r-full", "base-a", "model"), ("r-other", "base-b", "adapter")):
        (checkpoints / round_id / weights).mkdir(parents=True)
        (checkpoints / round_id / "round.json").write_text(json.dumps({"base_model": base}))
    assert jobs.comparable_candidate("r-2") is None  # nothing promoted yet
    current["id"] = "r-1"
    assert jobs.comparable_candidate("r-2").weights_dir == checkpoints / "r-1" / "adapter"
    assert jobs.comparable_candidate("r-1") is None  # the candidate's own evals, run again
    assert jobs.comparable_candidate("r-other") is None  # an adapter of another base
    current["id"] = "r-full"
    assert jobs.comparable_candidate("r-2").weights_dir == checkpoints / "r-full" / "model"  # a full fine-tune
    current["id"] = "r-gone"  # promoted, then deleted from disk
    assert jobs.comparable_candidate("r-2") is None

    def store_closed():
        raise RuntimeError("Connection already closed")

    jobs.promoted = store_closed  # at shutdown: the round is still evaluated, against the base
    assert jobs.comparable_candidate("r-2") is None


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


APP_THAT_STARTS_A_ROUND = """
import sys, time
from pathlib import Path
from pipeline import JobManager
from training.config import load_recipe
from ui.settings import Settings
data_dir, base, snapshot, steps = sys.argv[1:]
settings = Settings(data_dir=Path(data_dir), base_model=base, eval_max_new_tokens=4)
config = load_recipe("dpo_qlora").with_overrides(base_model=base, max_steps=int(steps), lora_r=4,
                                                 load_in_4bit=False, max_length=64).validate()
print(JobManager(settings).start_round(config, Path(snapshot)).round_id, flush=True)
time.sleep(600)
"""


def crashed_app_started_a_round(data_dir, base: str, steps: int):
    """An app process that starts a round and is then killed with -9: the round runs on without it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    snapshot = write_rows(dpo_rows(6), data_dir / "snapshots" / "dpo-test.jsonl")
    app = subprocess.Popen([sys.executable, "-c", APP_THAT_STARTS_A_ROUND, str(data_dir), base, str(snapshot),
                            str(steps)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    round_id = app.stdout.readline().strip()
    status = data_dir / "runs" / round_id / "status.json"
    deadline = time.monotonic() + 120
    while not (status.exists() and json.loads(status.read_text())["state"] == "running"):
        assert time.monotonic() < deadline and app.poll() is None, "the round never started"
        time.sleep(0.2)
    app.kill()
    app.wait()
    return round_id


def test_a_restarted_app_adopts_the_running_round_evaluates_it_and_can_cancel(tiny_model_dir, data_dir):
    round_id = crashed_app_started_a_round(data_dir, str(tiny_model_dir), steps=12)
    prompts = data_dir / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"sea {i}"}) + "\n" for i in range(64)))
    settings = Settings(data_dir=data_dir, base_model=str(tiny_model_dir), eval_prompts=prompts,
                        eval_max_new_tokens=64)
    restarted = JobManager(settings)
    adopted = restarted.current
    assert adopted is restarted.adopted and adopted.kind == "train" and adopted.round_id == round_id
    assert adopted.running and "already running" in restarted.busy()
    config = load_recipe("dpo_qlora").with_overrides(base_model=str(tiny_model_dir), max_steps=1, lora_r=4,
                                                     load_in_4bit=False, max_length=64).validate()
    with pytest.raises(JobBusy, match=round_id):
        restarted.start_round(config, data_dir / "snapshots" / "dpo-test.jsonl")  # no second round beside it
    assert wait_for(adopted) == 0
    evals = restarted.current  # evaluated when done, as if this app had started it
    assert evals.kind == "eval" and evals.round_id == round_id and evals.running
    again = JobManager(settings)  # a second restart, during the evals: adopted, then cancelled
    assert again.current.kind == "eval" and again.current.round_id == round_id
    assert again.cancel() == f"Cancelled eval {round_id}."
    assert wait_for(again.current) != 0 and not again.busy()
    assert not (settings.checkpoints_dir / round_id / "eval.json").exists()
    assert (settings.checkpoints_dir / round_id / "round.json").exists()


def test_a_dead_or_reused_pid_in_an_old_status_file_is_not_adopted(tiny_model_dir, data_dir):
    import os

    settings = Settings(data_dir=data_dir, base_model=str(tiny_model_dir))
    for round_id, pid in (("r-dead", 2**22 + 7), ("r-reused", os.getpid())):  # os.getpid(): alive, but not a trainer
        (settings.runs_dir / round_id).mkdir(parents=True)
        (settings.runs_dir / round_id / "status.json").write_text(json.dumps({"state": "running", "pid": pid}))
    jobs = JobManager(settings)
    assert jobs.current is None and jobs.busy() is None


# ---------------------------------------------------------------- what a cancel reports

def stand_in_job(jobs: JobManager, kind: str, round_id: str):
    """A job whose process only waits to be stopped: cancel() and the watcher see a real process group,
    and the test decides what the round left on disk."""
    import subprocess
    import sys
    import threading

    from pipeline import Job

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    job = Job(kind, round_id, jobs.settings.runs_dir / round_id, process)
    jobs.current = job
    jobs.history.append(job)
    threading.Thread(target=jobs._watch, args=(job,), daemon=True).start()
    return job


def cancel_and_describe(jobs: JobManager, job, by: str | None = "bob") -> str:
    jobs.cancel(by=by)
    assert job.handled.wait(30) and jobs.was_cancelled(job)
    return jobs.cancellation(job)


def test_a_cancel_says_who_when_how_far_and_what_was_kept(data_dir):
    import os
    import re
    import signal

    from formats import ProgressFiles

    jobs = JobManager(Settings(data_dir=data_dir))
    checkpoints = jobs.settings.checkpoints_dir

    # training stopped mid-way: the trainer removed its temp dir, nothing is under checkpoints/
    job = stand_in_job(jobs, "train", "r-mid")
    ProgressFiles(job.log_dir, "r-mid").event("step", step=3, max_steps=8)
    text = cancel_and_describe(jobs, job)
    assert re.fullmatch(r"\*\*training\*\* `r-mid` cancelled by bob at \d\d:\d\d:\d\d UTC after 3/8 steps: "
                        r"nothing was written under checkpoints/; its log stays in runs/r-mid/ \(Past rounds\)\.", text)

    # the cancel landed after the trainer's final rename: the round is complete, only its evals are missing
    job = stand_in_job(jobs, "train", "r-late")
    (checkpoints / "r-late" / "adapter").mkdir(parents=True)
    text = cancel_and_describe(jobs, job)
    assert "before it began" in text and "checkpoint `r-late` is kept, but its evals were not started" in text
    assert "nothing was written" not in text

    # an eval of a checkpoint never evaluated: the weights stay, unevaluated
    job = stand_in_job(jobs, "eval", "r-late")
    ProgressFiles(job.log_dir, "r-late", kind="eval").event("batch", step=8, max_steps=32)
    text = cancel_and_describe(jobs, job, by="ann")
    assert "**evals of** `r-late` cancelled by ann at " in text and "after 8/32 prompts" in text
    assert "answers generated so far were dropped; no eval report was written" in text
    assert "the checkpoint itself is kept, not evaluated" in text

    # an eval run again: the earlier report is untouched, and said to be
    earlier = checkpoints / "r-late" / "eval.json"
    earlier.write_text("{}")
    os.utime(earlier, (time.time() - 3600, time.time() - 3600))  # written an hour before this run
    job = stand_in_job(jobs, "eval", "r-late")
    assert "its earlier report (written " in cancel_and_describe(jobs, job)

    # stopped from outside the app: the subprocess's own status says so, and nobody here is named
    job = stand_in_job(jobs, "eval", "r-late")
    ProgressFiles(job.log_dir, "r-late", kind="eval").status("cancelled", error="cancelled by SIGTERM")
    os.killpg(job.process.pid, signal.SIGTERM)
    assert job.handled.wait(30) and jobs.was_cancelled(job) and not job.cancelled
    assert "cancelled from outside the app (cancelled by SIGTERM)" in jobs.cancellation(job)
