"""`python -m evals run --adapter DIR [--prompts FILE] ...`: the promotion gate as a command.

Exit codes: 0 no regression, 1 a regression was flagged, 2 bad input
(128 + signal number when cancelled with --log-dir).

Progress goes to a tqdm bar on stderr and, with `--log-dir`, to the same kind
of progress files a training round writes (formats.ProgressFiles, kind "eval"):
`eval.metrics.jsonl` gets an event per finished batch (step = prompts done,
max_steps = prompts in all, elapsed_s and eta_s since generation began),
`eval.log` a readable line for each, and `eval.status.json` says running, done,
failed or cancelled. pipeline.py passes `runs/<round-id>/` and reads them back.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from evals.config import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_MAX_NEW_TOKENS
from evals.report import BASELINES, DEFAULT_CACHE_DIR, EvalInputError, run_eval, write_report
from formats import ProgressFiles

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compare an adapter with its base and gate it")
    run.add_argument("--adapter", required=True, type=Path, help="LoRA adapter dir (adapter_config.json + weights), or a full "
                     "fine-tune's model dir (checkpoints/<round>/model)")
    run.add_argument("--prompts", type=Path, help="JSONL of {\"prompt\"} or MT-bench {\"turns\"} lines, or a CSV "
                     "with a prompt column (default: the bundled set)")
    run.add_argument("--base-model", help="embedded (default), a Hugging Face id, a local model dir or a .gguf")
    run.add_argument("--references", type=Path, help="JSONL of references (MT-bench format or "
                     "{\"prompt\"|\"question_id\", \"reference\"})")
    run.add_argument("--out", type=Path, help="write the report JSON here (default: eval.json beside the adapter)")
    run.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where converted base models live")
    run.add_argument("--max-new-tokens", type=_positive, default=DEFAULT_MAX_NEW_TOKENS)
    run.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE, help="prompts per batch")
    run.add_argument("--dtype", default=DEFAULT_DTYPE, choices=["fp32", "bf16", "auto"],
                     help="weights dtype for generation (auto: bf16, what the app serves, where the GPU or "
                          "CPU computes it fast, else fp32)")
    run.add_argument("--baseline-system-prompt", metavar="TEXT",
                     help="also answer every prompt with the base and this system prompt, and add a prompted_base "
                          "column to each check: did the fine-tune beat a prompt?")
    run.add_argument("--baseline-retrieval", type=Path, metavar="CORPUS_OR_INDEX",
                     help="also answer every prompt with the base and the top-3 passages of this corpus (.txt/.md/"
                          ".jsonl file or folder, or a built index folder) in the prompt, and add a retrieval_base "
                          "column to each check: did the fine-tune beat retrieval?")
    run.add_argument("--promoted", type=Path, metavar="DIR",
                     help="the current candidate's adapter (or full model) dir, which this one would replace: also "
                          "run every check against its answers (taken from its eval.json where they fit), add a "
                          "promoted column, and fail the gate where the candidate got worse than it")
    run.add_argument("--log-dir", type=Path, help="write progress files here: eval.metrics.jsonl, eval.log, "
                     "eval.status.json (pipeline.py passes runs/<round-id>/)")
    return parser.parse_args(argv)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def verdict(report: dict) -> str:
    """The gate's verdict in a line: what regressed against the base, and against the promoted round."""
    worse = (report.get("promoted") or {}).get("flagged") or []
    return ("REGRESSION: " + ", ".join(report["flagged"] + [f"{n} (against the promoted round)" for n in worse])
            if report["regression"] else "no regression")


def format_table(report: dict) -> str:
    """The checks as a fixed-width table, flagged rows marked; one more column per baseline in the report."""
    baselines = [name for name in BASELINES if report.get(name)]
    columns_of = baselines + (["promoted"] if report.get("promoted") else [])  # a figure each, beside the candidate's
    extra = "".join(f" {name.split('_')[0]:>9}" for name in columns_of)
    lines = [f"{'check':<14} {'base':>8} {'candidate':>10}{extra}  flag", "-" * (40 + len(extra))]
    for name, check in report["checks"].items():
        mark = ("FLAGGED" if check["flagged"] else "warning" if check.get("warning")
                else "skipped" if check.get("skipped") else "ok")
        if check.get("flagged_against_promoted"):
            mark += ", worse than promoted"
        columns = "".join(f" {_fmt(check.get(b)):>9}" for b in columns_of)
        lines.append(f"{name:<14} {_fmt(check['base']):>8} {_fmt(check['candidate']):>10}{columns}  {mark}")
    worse = (report.get("promoted") or {}).get("flagged") or []
    warnings = report.get("warnings") or []  # shown, not failing (a length shift without a quality drop)
    lines += ["-" * 40, f"{report['n_prompts']} prompts; {verdict(report)}"
              + (f"; warnings (not failing): {', '.join(warnings)}" if warnings else "")]
    trained_on = report.get("trained_on") or {}
    if trained_on.get("left_out"):
        lines.append(f"left out {len(trained_on['left_out'])} eval prompts the candidate trained on "
                     f"(ids {', '.join(trained_on['left_out'][:10])}{', ...' if len(trained_on['left_out']) > 10 else ''})")
    for why in trained_on.get("unreadable") or []:
        lines.append(f"could not check its training data for eval prompts: {why}")
    for name in baselines:
        about = report[name]
        what = (repr(about["system_prompt"][:40]) if "system_prompt" in about
                else f"{about.get('chunks')} chunks of {about.get('index')}")
        lines.append(f"{BASELINES[name]} ({what}): {about['summary']}")
    promoted = report.get("promoted")
    if promoted:
        lines.append(f"promoted round ({promoted['round_id']}; {promoted['answers_on_record']} of "
                     f"{report['n_prompts']} answers from its eval report): {promoted['summary']}")
    flagged = [(name, report["checks"][name]) for name in report["flagged"]]
    flagged += [(f"{name} (against the promoted round)", promoted["checks"][name]) for name in worse]
    for title, check in flagged:
        for example in check["examples"][:1]:
            lines.append(f"  {title}: {example['prompt'][:60]!r} -> {example['candidate'][:80]!r}")
    return "\n".join(lines)


class Cancelled(Exception):
    def __init__(self, signum: int):
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_cancelled(signum, frame):
    raise Cancelled(signum)


class Progress:
    """The tqdm bar on stderr and, given progress files, their events, log lines and status.

    run_eval calls it with (prompts done, prompts in all) before the first batch and after each one.
    """

    def __init__(self, files: ProgressFiles | None):
        self.files, self.bar, self.started = files, None, None

    def _elapsed(self) -> float | None:
        return None if self.started is None else round(time.monotonic() - self.started, 1)

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc="generating", unit="prompt", file=sys.stderr)
            self.started = time.monotonic()  # generation begins: model loading stays out of the rate
        self.bar.update(done - self.bar.n)
        if self.files is None:
            return
        elapsed = self._elapsed()
        eta = round(elapsed / done * (total - done), 1) if done else None
        self.files.event("start" if done == 0 else "batch", step=done, max_steps=total, elapsed_s=elapsed, eta_s=eta)
        if done:
            self.files.say(f"generated {done}/{total} prompts in {elapsed:.0f} s"
                           + (f", about {eta:.0f} s left" if eta else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def done(self, report: dict, out: Path) -> None:
        if self.files is None:
            return
        n, flagged = report["n_prompts"], report["flagged"]
        self.files.event("end", step=n, max_steps=n, elapsed_s=self._elapsed(), eta_s=0.0,
                         regression=report["regression"], flagged=flagged,
                         flagged_against_promoted=(report.get("promoted") or {}).get("flagged", []), report=str(out))
        left_out = (report.get("trained_on") or {}).get("left_out")
        if left_out:
            self.files.say(f"left out {len(left_out)} eval prompts the candidate trained on; the gate judged {n}")
        self.files.say(verdict(report) + f"; report {out}")
        self.files.status("done")

    def failed(self, state: str, message: str) -> None:
        if self.files is None:
            return
        try:
            self.files.say(f"eval {state}: {message}")
            self.files.event("error", state=state, error=message)
            self.files.status(state, error=message)
        except OSError:
            pass  # an unwritable log dir must not hide the error being reported


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models.loading import ModelLoadError

    progress, previous = Progress(None), {}
    try:
        if args.log_dir is not None:
            # run id: the round's, when the adapter sits where training puts it (checkpoints/<round-id>/adapter)
            progress.files = ProgressFiles(args.log_dir, args.adapter.resolve().parent.name, kind="eval")
            progress.files.status("running")
            progress.files.say(f"eval of {args.adapter} on {args.prompts or 'the bundled prompt set'}")
            if threading.current_thread() is threading.main_thread():
                # a cancel (SIGTERM from pipeline.py, or Ctrl-C) must still leave a status behind
                previous = {s: signal.signal(s, _raise_cancelled) for s in (signal.SIGTERM, signal.SIGINT)}
        report = run_eval(
            args.adapter, prompts_file=args.prompts, base_model=args.base_model,
            references_file=args.references, cache_dir=args.cache_dir,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=progress,
            dtype=args.dtype, baseline_system_prompt=args.baseline_system_prompt,
            baseline_retrieval=args.baseline_retrieval, promoted=args.promoted,
        )
        out = write_report(report, args.out or args.adapter.parent / "eval.json")
        progress.done(report, out)
    except (EvalInputError, ModelLoadError, OSError) as exc:
        progress.failed("failed", _one_line(exc))
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Cancelled as exc:
        progress.failed("cancelled", str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BaseException as exc:
        progress.failed("failed", f"{type(exc).__name__}: {_one_line(exc)}")
        raise
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(format_table(report))
    print(f"report: {out}")
    return EXIT_REGRESSION if report["regression"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
