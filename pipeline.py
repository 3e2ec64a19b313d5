"""The pipeline: start a round -> evaluate it -> status, cancel. One subprocess at a time.

The app never trains in-process: a round is `python -m training run ...` reading
a snapshot file, and its evals are `python -m evals run ...` writing eval.json
next to the checkpoint (ARCHITECTURE.md, one-way data flow). This module starts,
watches and cancels those processes, and is the one place that knows the
`runs/<round-id>/` layout: it hands each subprocess that dir as its `--log-dir`
and reads the progress files back (formats.ProgressFiles), so progress survives
a page refresh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from formats import ProgressFiles
from training.config import RoundConfig, write_recipe

ROOT = Path(__file__).resolve().parent  # the repo root: subprocesses run `python -m training` from here


class JobBusy(RuntimeError):
    """A second start while a round or eval is running."""


@dataclass
class Job:
    kind: str  # "train" | "eval"
    round_id: str
    log_dir: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    returncode: int | None = None
    cancelled: bool = False

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def output_log(self) -> Path:
        return self.log_dir / f"{self.kind}.out.log"


def new_round_id(method: str) -> str:
    return f"r-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{method}"


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64_000))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # tqdm redraws with \r; keep only the last state of each line (splitlines would split on \r too)
    cleaned = [line.split("\r")[-1] for line in text.split("\n")]
    return "\n".join(cleaned[-lines:])


class JobManager:
    """Runs at most one subprocess; a finished round queues its evals automatically."""

    def __init__(self, settings, on_finished=None):
        self.settings = settings
        self.on_finished = on_finished  # called with the Job once it ends (e.g. to refresh pickers)
        self.current: Job | None = None
        self.history: list[Job] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ starting

    def _spawn(self, module: str, round_id: str, args: list[str]) -> Job:
        kind = {"training": "train", "evals": "eval"}[module]
        with self._lock:
            if self.busy():
                raise JobBusy(self.busy())
            log_dir = self.settings.runs_dir / round_id
            log_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
            output = (log_dir / f"{kind}.out.log").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # cancel signals the whole group, not the app
            )
            output.close()
            job = Job(kind, round_id, log_dir, process)
            self.current = job
            self.history.append(job)
        threading.Thread(target=self._watch, args=(job,), daemon=True).start()
        return job

    def busy(self) -> str | None:
        """Why nothing new can start now, or None."""
        job = self.current
        if job is None or not job.running:
            return None
        what = "A training round" if job.kind == "train" else "An eval run"
        return f"{what} ({job.round_id}) is already running: wait for it or cancel it."

    def start_round(self, config: RoundConfig, snapshot: Path) -> Job:
        """Train `config` on a snapshot: the config is written as the round's recipe, so the
        subprocess gets exactly what the admin set, with no flags re-parsed."""
        if self.busy():
            raise JobBusy(self.busy())
        round_id = new_round_id(config.method)
        run_dir = self.settings.runs_dir / round_id
        recipe = write_recipe(config, run_dir / "config.yaml")
        args = [
            "run", "--data", str(snapshot), "--out", str(self.settings.checkpoints_dir), "--round-id", round_id,
            "--log-dir", str(run_dir), "--cache-dir", str(self.settings.cache_dir), "--recipe", str(recipe),
        ]
        return self._spawn("training", round_id, args)

    def start_eval(self, round_id: str) -> Job:
        checkpoint = self.settings.checkpoints_dir / round_id
        args = [
            "run", "--adapter", str(checkpoint / "adapter"), "--out", str(checkpoint / "eval.json"),
            "--base-model", self.settings.base_model, "--cache-dir", str(self.settings.cache_dir),
            "--log-dir", str(self.settings.runs_dir / round_id),
        ]
        if self.settings.eval_prompts:
            args += ["--prompts", str(self.settings.eval_prompts)]
        if self.settings.eval_max_new_tokens:
            args += ["--max-new-tokens", str(self.settings.eval_max_new_tokens)]
        return self._spawn("evals", round_id, args)

    # ------------------------------------------------------------ watching

    def _watch(self, job: Job) -> None:
        job.returncode = job.process.wait()
        if job.kind == "train" and job.returncode == 0 and not job.cancelled:
            try:
                self.start_eval(job.round_id)  # every finished round is evaluated before promotion
            except JobBusy:
                pass
        if self.on_finished is not None:
            self.on_finished(job)

    def cancel(self) -> str:
        job = self.current
        if job is None or not job.running:
            return "Nothing is running."
        job.cancelled = True
        try:
            os.killpg(job.process.pid, signal.SIGTERM)  # the trainer cleans up its temp dir on SIGTERM
            job.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(job.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return f"Cancelled {job.kind} {job.round_id}."

    def progress(self, round_id: str, kind: str = "train") -> ProgressFiles:
        return ProgressFiles(self.settings.runs_dir / round_id, round_id, kind, fresh=False)

    def metrics(self, round_id: str) -> list[dict]:
        return self.progress(round_id).events()

    def status_json(self, round_id: str) -> dict:
        return self.progress(round_id).read_status()

    def log_text(self, job: Job | None, lines: int = 40) -> str:
        """The subprocess's own readable log while it runs; raw output (tracebacks) once it failed."""
        if job is None:
            return ""
        own_log = self.progress(job.round_id, job.kind).log_path
        if own_log.exists() and job.returncode in (None, 0):
            return tail(own_log, lines)
        return tail(job.output_log, lines)

    def eval_progress(self, job: Job) -> tuple[int, int]:
        """(done, total) prompts from the eval's progress events, (0, 0) before it starts."""
        steps = [e for e in self.progress(job.round_id, "eval").events() if e.get("step") is not None]
        return (int(steps[-1]["step"]), int(steps[-1]["max_steps"] or 0)) if steps else (0, 0)

    def past_runs(self) -> list[dict]:
        """Every round ever started (runs/*/status.json), newest first, failures included."""
        rows = []
        for status_file in sorted(self.settings.runs_dir.glob("*/status.json"), reverse=True):
            round_id = status_file.parent.name
            status = self.status_json(round_id)
            state = status.get("state", "?")
            if state == "running" and not _alive(status.get("pid")):
                state = "died (killed before it could record why)"
            rows.append({"round": round_id, "state": state, "error": (status.get("error") or "")[:160],
                         "log": str(self.progress(round_id).log_path)})
        return rows


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
