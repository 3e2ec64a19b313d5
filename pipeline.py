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

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from formats import PROGRESS_NAMES, ProgressFiles
from training.config import RoundConfig, write_recipe
from training.registry import get_checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parent  # the repo root: subprocesses run `python -m training` from here


KIND_NAMES = {"train": "training round", "eval": "eval run"}


class JobBusy(RuntimeError):
    """A second start while a round or eval is running."""


class AdoptedProcess:
    """A round or eval started by an earlier app process that is gone (restart, crash).

    It is not our child, so there is no waitpid: it is watched by pid, and its result is what it
    wrote to its status file. Duck-types the parts of subprocess.Popen that Job and cancel use."""

    POLL_S = 0.5  # how often wait() looks; a round lasts minutes

    def __init__(self, pid: int, status: ProgressFiles):
        self.pid = pid
        self.status = status
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _alive(self.pid):
            self.returncode = 0 if self.status.read_status().get("state") == "done" else 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(self.POLL_S)
        return self.returncode


@dataclass
class Job:
    kind: str  # "train" | "eval"
    round_id: str
    log_dir: Path
    process: subprocess.Popen | AdoptedProcess
    started: float = field(default_factory=time.time)
    returncode: int | None = None
    ended: float | None = None  # time.time() once the watcher saw the process end
    cancelled: bool = False  # by this app's cancel(); a signal from elsewhere shows only in the status file
    cancelled_by: str | None = None  # the user who pressed Cancel
    cancelled_at: float | None = None  # time.time() of the press
    handled: threading.Event = field(default_factory=threading.Event)  # set once the watcher has acted on the end

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


BACKGROUND_NICE = 19  # the lowest CPU priority there is


def yield_cpu_to_serving(pid: int) -> str | None:
    """Give a training or eval process the lowest CPU priority, so that annotators generating while a round
    trains keep the decode loop's speed; returns why it could not, or None.

    Both processes run torch on every core, and each one's OpenMP threads wait for the others in turn: at
    equal priority, Arena decoding fell from 143.5 to 21.6 tok/s while a round trained (2 cores), and the round
    itself made 0.8 steps a minute instead of 7.5. At this priority decoding kept its 143.5 tok/s, and the
    round takes the cores whenever nobody is generating (bench/bench_contention.py). On Linux with autogroup
    scheduling (most distributions), the job's own session (start_new_session) is a group of its own, and
    only the group's nice value counts against the app's (the process's alone changed nothing: 10 tok/s),
    so both are set.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, pid, BACKGROUND_NICE)
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            autogroup.write_text(str(BACKGROUND_NICE))
    except OSError as exc:
        return str(exc)
    return None


class JobManager:
    """Runs at most one subprocess; a finished round queues its evals automatically."""

    def __init__(self, settings, on_finished=None, promoted=None):
        self.settings = settings
        self.on_finished = on_finished  # called with the Job once it ends (e.g. to refresh pickers)
        # () -> the current candidate's round id or None (the store's; only the app opens it): every eval
        # compares the round with it too, the round a promotion would replace
        self.promoted = promoted
        self.current: Job | None = None
        self.history: list[Job] = []
        self._lock = threading.RLock()  # _watch holds it while it starts a round's evals
        self.adopted = self._adopt_running()

    def _adopt_running(self) -> Job | None:
        """A round (or eval) that an earlier app process started and that still runs becomes the
        current job again: shown, cancellable, evaluated when done, and a second start is refused.
        Without this, a restarted app would start a second round beside the first."""
        for kind, module in (("train", "training"), ("eval", "evals")):
            for status_file in self.settings.runs_dir.glob(f"*/{PROGRESS_NAMES[kind][2]}"):
                files = ProgressFiles(status_file.parent, status_file.parent.name, kind, fresh=False)
                status = files.read_status()
                pid = status.get("pid")
                if status.get("state") != "running" or not _runs_module(pid, module):
                    continue
                job = Job(kind, files.run_id, files.dir, AdoptedProcess(int(pid), files))
                self.current = job
                self.history.append(job)
                threading.Thread(target=self._watch, args=(job,), daemon=True).start()
                return job  # one job runs at a time, so there is at most one to adopt
        return None

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
            problem = yield_cpu_to_serving(process.pid)
            if problem is not None:
                print(f"warning: the {kind} job {round_id} runs at the app's CPU priority ({problem}): "
                      "generation will be several times slower while it runs", file=sys.stderr, flush=True)
            files = ProgressFiles(log_dir, round_id, kind, fresh=False)
            if files.read_status().get("pid") != process.pid:
                # "running" from the first moment, not only once the child has imported torch (seconds
                # later), so an app restarted in between adopts it. Unless the child already wrote its own.
                files.status("running", pid=process.pid)
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

    def start_eval(self, round_id: str, baseline_system_prompt: str | None = None,
                   baseline_retrieval: Path | None = None) -> Job:
        checkpoint = self.settings.checkpoints_dir / round_id
        found = get_checkpoint(self.settings.checkpoints_dir, round_id)
        # adapter/, or a full fine-tune's model/ (the whole weights); a round not (yet) complete fails in the eval
        weights = found.weights_dir if found is not None else checkpoint / "adapter"
        args = [
            "run", "--adapter", str(weights), "--out", str(checkpoint / "eval.json"),
            "--base-model", self.settings.base_model, "--cache-dir", str(self.settings.cache_dir),
            "--log-dir", str(self.settings.runs_dir / round_id),
        ]
        if self.settings.eval_prompts:
            args += ["--prompts", str(self.settings.eval_prompts)]
        if self.settings.eval_max_new_tokens:
            args += ["--max-new-tokens", str(self.settings.eval_max_new_tokens)]
        if baseline_system_prompt:
            args += ["--baseline-system-prompt", baseline_system_prompt]
        if baseline_retrieval:
            args += ["--baseline-retrieval", str(baseline_retrieval)]
        promoted = self.comparable_candidate(round_id)
        if promoted is not None:
            args += ["--promoted", str(promoted.weights_dir)]
        return self._spawn("evals", round_id, args)

    def comparable_candidate(self, round_id: str):
        """The current candidate's checkpoint (training.registry.Checkpoint), when `round_id` would replace it:
        another round, still on disk, trained on the same base (an adapter of another base would load onto
        this one's weights). None otherwise, and where the candidate cannot be read: the evals then judge
        the round against the base alone, as before any promotion."""
        try:
            current = self.promoted() if self.promoted is not None else None
        except Exception as exc:  # noqa: BLE001 (a database error, the store closed at shutdown)
            print(f"warning: could not read the current candidate ({exc}): the evals of {round_id} compare it "
                  "with the base only", file=sys.stderr, flush=True)
            return None
        if not current or current == round_id:
            return None
        # one listing for both (the Evals tab's gate asks on every view)
        listed = {c.round_id: c for c in list_checkpoints(self.settings.checkpoints_dir)}
        this, other = listed.get(round_id), listed.get(current)
        if this is None or other is None:
            return None
        base = this.round.get("base_model")
        return other if base is not None and base == other.round.get("base_model") else None

    # ------------------------------------------------------------ watching

    def _watch(self, job: Job) -> None:
        returncode = job.process.wait()
        try:
            with self._lock:  # no gap between a round and its evals in which a second round could start
                job.returncode, job.ended = returncode, time.time()
                if job.kind == "train" and returncode == 0 and not job.cancelled:
                    self.start_eval(job.round_id)  # every finished round is evaluated before promotion
            if self.on_finished is not None:
                self.on_finished(job)
        finally:
            job.handled.set()

    def cancel(self, by: str | None = None, kind: str | None = None) -> str:
        """Stop the running job (only if it is of `kind`, when given), remembering who asked and when,
        so the tabs can say so instead of a bare "cancelled"."""
        job = self.current
        if job is None or not job.running or (kind is not None and job.kind != kind):
            return "Nothing is running." if kind is None else f"No {KIND_NAMES[kind]} is running."
        job.cancelled, job.cancelled_by, job.cancelled_at = True, by, time.time()
        try:
            os.killpg(job.process.pid, signal.SIGTERM)  # the trainer cleans up its temp dir on SIGTERM
            job.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(job.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return f"Cancelled {job.kind} {job.round_id}."

    def was_cancelled(self, job: Job) -> bool:
        """Cancelled from this app, or by a signal from elsewhere (the subprocess recorded "cancelled")."""
        if job.running:
            return False
        return job.cancelled or self.progress(job.round_id, job.kind).read_status().get("state") == "cancelled"

    def cancellation(self, job: Job) -> str:
        """What a cancel did, in one markdown sentence: who and when, how far the job had got, and what
        is left on disk. A cancel can land after the work was saved (the trainer's final rename, the
        eval's report write), so what was kept is read from disk, not assumed."""
        what = "training" if job.kind == "train" else "evals of"
        if job.cancelled:
            who = f" by {job.cancelled_by}" if job.cancelled_by else ""
            when = f" at {time.strftime('%H:%M:%S', time.gmtime(job.cancelled_at))} UTC" if job.cancelled_at else ""
        else:  # not from this app: a kill, a Ctrl-C, a restart's SIGTERM
            error = self.progress(job.round_id, job.kind).read_status().get("error")
            who, when = " from outside the app", f" ({error})" if error else ""
        done, total = self._reached(job)
        reached = f" after {done}/{total} {'prompts' if job.kind == 'eval' else 'steps'}" if total else \
            " before it began (while loading the model)"
        return f"**{what}** `{job.round_id}` cancelled{who}{when}{reached}: {self._kept(job, begun=bool(total))}"

    def _reached(self, job: Job) -> tuple[int, int]:
        """(done, total) prompts or steps from the job's own progress events; (0, 0) before it began."""
        if job.kind == "eval":
            return self.eval_progress(job)
        steps = [e for e in self.metrics(job.round_id) if e.get("step") is not None]
        return (int(steps[-1]["step"]), int(steps[-1].get("max_steps") or 0)) if steps else (0, 0)

    def _kept(self, job: Job, begun: bool) -> str:
        checkpoint = self.settings.checkpoints_dir / job.round_id
        if job.kind == "train":
            if checkpoint.is_dir():
                return (f"the round had already finished, so checkpoint `{job.round_id}` is kept, but its evals were "
                        "not started: run them in the Evals tab before promoting it.")
            return (f"nothing was written under checkpoints/; its log stays in runs/{job.round_id}/ "
                    "(Past rounds).")
        dropped = "the answers generated so far were dropped; " if begun else ""
        report = checkpoint / "eval.json"
        try:
            written = report.stat().st_mtime
        except OSError:
            return (f"{dropped}no eval report was written, and the checkpoint itself is kept, not evaluated "
                    "(run the evals again before promoting it).")
        if written >= job.started:
            return "its report had just been written when the cancel arrived, and is kept."
        return (f"{dropped}its earlier report (written {time.strftime('%Y-%m-%d %H:%M', time.gmtime(written))} "
                "UTC) is kept.")

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
    try:  # an exited process whose parent died may wait as a zombie for an init that never reaps it
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know


def _runs_module(pid, module: str) -> bool:
    """pid is alive and is `python -m <module>`: a pid in an old status file may have been reused."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the live pid
    return b"-m" in argv and module.encode() in argv
