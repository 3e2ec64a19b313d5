"""Evals tab: each checkpoint's automatic checks against the base, the promotion
gate, a trend over rounds, and human-vote win rates beside them."""

from __future__ import annotations

import json
import time

import gradio as gr
import pandas as pd

from evals import winrate
from evals.report import BASELINES
from pipeline import JobBusy
from ui.services import Services, bind, counted, described, inline_html, picker_update, progress_bar, refuse, user_error

CHECK_COLUMNS = ["check", "flag", "base", "candidate", "note"]


def number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def note(check: dict) -> str:
    """The check's explanation, led by its paired evidence where it has some."""
    text = check.get("explanation") or check.get("note") or ""
    if "p_value" in check:
        text = (f"{check['newly_flagged']} prompts newly flagged, {check['no_longer_flagged']} no longer "
                f"(chance p = {check['p_value']:.3g}). " + text)
    return text


BEATS = {True: "✅ beats it", False: "❌ does not beat it", None: "–"}


def versus(check: dict, baseline: str) -> str:
    """Whether the candidate beats a baseline on one check; an equal figure is a tie, not a loss."""
    won = check.get(f"beats_{baseline}")
    if won is False and check.get("candidate") == check.get(baseline):
        return "= tie"
    return BEATS[won]


def checks_frame(report: dict | None) -> pd.DataFrame:
    """One row per check; each baseline in the report (prompted base, retrieval base) joins as two
    columns: its figure and whether the candidate beats it. (The promoted round's comparison is a sentence
    in the gate's text, gate_text: a third pair of columns did not fit beside both baselines at 1024 px.)"""
    baselines = {name: label for name, label in BASELINES.items() if report and report.get(name)}
    columns = CHECK_COLUMNS[:4] + [c for label in baselines.values() for c in (label, f"vs {label}")] + CHECK_COLUMNS[4:]
    if not report:
        return pd.DataFrame(columns=columns)
    rows = [
        {
            "check": name,
            "flag": ("🚩 REGRESSION" if check.get("flagged") else "🚩 worse than promoted"
                     if check.get("flagged_against_promoted") else "⚠️ warning" if check.get("warning") else "ok"),
            "base": number(check.get("base")),
            "candidate": number(check.get("candidate")),
            **{label: number(check.get(key)) for key, label in baselines.items()},
            **{f"vs {label}": versus(check, key) for key, label in baselines.items()},
            "note": note(check),
        }
        for name, check in report.get("checks", {}).items()
    ]
    return pd.DataFrame(rows, columns=columns)


# Pixel widths that fit each header's longest word and its values: left to the browser, the columns
# were sized by their values alone and the headers broke mid-word ("fla g", "candida te").
COLUMN_PX = {"check": 150, "flag": 140, "base": 90, "candidate": 105}
BASELINE_PX, VERSUS_PX = 100, 130  # a baseline's figure; "vs <baseline>" ("❌ does not beat it" on two lines)


def column_widths(columns) -> list[str]:
    return [f"{COLUMN_PX.get(c) or (VERSUS_PX if c.startswith('vs ') else BASELINE_PX)}px" for c in columns]


def checks_table(report: dict | None):
    """The checks table as shown: the figures only, each column wide enough for its header. The long
    notes go below it (check_notes), where they read as sentences instead of a squeezed column."""
    frame = checks_frame(report).drop(columns="note")
    return gr.update(value=frame, column_widths=column_widths(frame.columns))


def check_notes(report: dict | None) -> str:
    """What each check measures, with its paired evidence: the table's legend."""
    if not report:
        return ""
    rows = checks_frame(report)
    return "\n".join(f"- **{row.check}**: {row.note}" for row in rows.itertuples() if row.note)


def examples_markdown(report: dict | None) -> str:
    if not report:
        return ""
    promoted = report.get("promoted") or {}
    sections = [(name, check) for name, check in report.get("checks", {}).items() if check.get("flagged")]
    sections += [(f"{name}, against the promoted round `{promoted.get('round_id')}`", promoted["checks"][name])
                 for name in promoted.get("flagged") or []]
    parts = []
    for title, check in sections:
        if check.get("examples"):
            parts.append(f"#### {title}")
            parts += ["```json\n" + json.dumps(example, indent=1, ensure_ascii=False)[:1500] + "\n```"
                      for example in check["examples"][:3]]
    return "\n".join(parts) or "No flagged examples."


# Checks whose figures are shares in [0, 1], so they share one axis (length_shift is in words).
TREND_CHECKS = ["canned_reply", "sales_talk", "repetition", "rouge_l", "empty_answers", "refusal_rate"]
TREND_COLORS = dict(zip(TREND_CHECKS, ["#dc2626", "#f97316", "#9333ea", "#2563eb", "#6b7280", "#16a34a"]))
LEADERBOARD_COLUMNS = ["model", "rating", "ci_low", "ci_high", "n_votes", "win_rate"]
PAIRWISE_COLUMNS = ["model_a", "model_b", "n_votes", "a_wins", "b_wins", "ties", "both_bad", "a_win_rate"]


def trend_frame(services: Services) -> pd.DataFrame:
    """Candidate value of every share-valued check, one point per evaluated round.

    The x axis is the round's number as a label ("#1", "#2", ...; "#01" once there are ten), one tick per round:
    as a number, the plot put ticks at 1.05, 1.10, ... between two rounds. The labels are padded to one width
    because the plot orders them as text, and the checkpoints come oldest first, so that order is the rounds'."""
    checkpoints = services.checkpoints() if services else []
    width = len(str(len(checkpoints)))
    points = []
    for index, checkpoint in enumerate(checkpoints, 1):
        for name, check in ((checkpoint.eval or {}).get("checks") or {}).items():
            if name in TREND_COLORS and isinstance(check.get("candidate"), (int, float)):
                points.append({"round": f"#{index:0{width}d}", "value": float(check["candidate"]), "check": name,
                               "round_id": checkpoint.round_id})
    frame = pd.DataFrame(points, columns=["round", "value", "check", "round_id"])
    # typed even when empty, so the plot starts with a category axis for the rounds and a numeric one for the values
    return frame.astype({"round": str, "value": float, "check": str, "round_id": str})


def trained_on_note(report: dict) -> str:
    """What the gate left out because the candidate trained on it (evals.report.leave_out_trained)."""
    trained_on = report.get("trained_on") or {}
    left_out = trained_on.get("left_out") or []
    who = ("this round (or one it continued, or the promoted round it is compared with)" if report.get("promoted")
           else "this round (or one it continued)")
    note = (f"\n\nℹ️ {counted(len(left_out), 'eval prompt')} left out: {who} trained on "
            f"{'it' if len(left_out) == 1 else 'them'}, and a round is not judged on questions it has seen. "
            f"The checks ran on the other {report.get('n_prompts')}." if left_out else "")
    if trained_on.get("unreadable"):
        note += "\n\n⚠️ Its training data could not be checked for eval prompts: " + "; ".join(trained_on["unreadable"])
    return note


def gate_text(services: Services, round_id: str | None) -> str:
    if not round_id:
        return "No checkpoint yet: train a round in the Train tab."
    checkpoint = next((c for c in services.checkpoints() if c.round_id == round_id), None)
    if checkpoint is None:
        return f"Checkpoint {round_id} not found."
    current = services.store.current_candidate()
    head = f"Current candidate: `{current or 'none (base only)'}`\n\n"
    if checkpoint.eval is None and checkpoint.stale_eval is not None:
        return head + (f"⚠️ **Not evaluated**: its eval report was made on other adapter weights "
                       f"(`{checkpoint.stale_eval.get('adapter_fingerprint')}`, now `{checkpoint.fingerprint}`): "
                       "run the evals again before promoting.")
    if checkpoint.eval is None:
        job = services.jobs.current
        running = job is not None and job.running and job.kind == "eval" and job.round_id == round_id
        return head + ("⏳ Evals are running for this checkpoint…" if running else
                       "⚠️ Not evaluated yet: promotion needs an eval report (or an override with a reason).")
    unmet = unmet_candidate(services, checkpoint, current)
    against = against_promoted_note(checkpoint.eval, round_id, current, unmet)
    if checkpoint.regression:
        flagged = [n for n, c in checkpoint.eval.get("checks", {}).items() if c.get("flagged")]
        worse = (checkpoint.eval.get("promoted") or {}).get("flagged") or []
        why = "; ".join(([f"flagged {', '.join(flagged)}"] if flagged else [])
                        + ([f"worse than the promoted round on {', '.join(worse)}"] if worse else []))
        return (head + f"🚩 **Promotion blocked**: {why}. An admin may override with a written reason."
                + against + trained_on_note(checkpoint.eval))
    if unmet:
        return head + "✅ All checks against the base pass." + against + trained_on_note(checkpoint.eval)
    warnings = checkpoint.eval.get("warnings") or []
    note = f" Warning: {', '.join(warnings)} changed, with no quality drop (a change of style, not a regression)." if warnings else ""
    prompted = checkpoint.eval.get("prompted_base")
    if prompted:
        note += f"\n\nAgainst the base with the system prompt “{prompted['system_prompt'][:80]}”: {prompted['summary']}."
    retrieval = checkpoint.eval.get("retrieval_base")
    if retrieval:
        note += f"\n\nAgainst the base with the top {retrieval.get('k')} passages of the corpus: {retrieval['summary']}."
    return (head + "✅ **All checks pass**: this checkpoint can be promoted." + note + against
            + trained_on_note(checkpoint.eval))


def unmet_candidate(services: Services, checkpoint, current: str | None) -> str | None:
    """The current candidate, where a promotion would replace it but this checkpoint's report was not compared
    with it (made before it was promoted, or by hand without --promoted) although it could be: such a report
    cannot say the round is no worse, so promoting it takes a reason, as a blocked gate does."""
    if checkpoint.eval is None or not current or current == checkpoint.round_id:
        return None
    if (checkpoint.eval.get("promoted") or {}).get("round_id") == current:
        return None
    return current if services.jobs.comparable_candidate(checkpoint.round_id) is not None else None


def against_promoted_note(report: dict, round_id: str, current: str | None, unmet: str | None) -> str:
    """What the report says of the round a promotion would replace, and whether that is still the current
    candidate: a report made before another round was promoted has not met it."""
    promoted = report.get("promoted")
    note = (f"\n\nAgainst the promoted round `{promoted.get('round_id')}`, the one it would replace: "
            f"{promoted['summary']}." if promoted else "")
    if unmet:
        return note + (f"\n\n⚠️ **Not compared with the current candidate** `{unmet}`, the round a promotion would "
                       "replace: this report was made before it was promoted. **Run evals again** to compare them, "
                       "or promote with a written reason.")
    if current and current != round_id and (promoted or {}).get("round_id") != current:
        note += (f"\n\nℹ️ Not compared with the current candidate `{current}`: the two rounds were trained on "
                 "different bases, or its checkpoint is no longer on disk.")
    return note


def show_checkpoint(services: Services, round_id: str | None, request: gr.Request = None):
    services.require(request, "reviewer")
    checkpoint = next((c for c in services.checkpoints() if c.round_id == round_id), None)
    report = checkpoint.eval if checkpoint else None
    return checks_table(report), check_notes(report), examples_markdown(report), gate_text(services, round_id)


def pick_a_checkpoint(services: Services) -> str:
    """What to do when no checkpoint is picked: there may be none to pick yet."""
    if not services.checkpoints():
        return "No checkpoint yet: train a round in the Train tab; its evals run by themselves when it ends."
    return "Pick a checkpoint first (the Checkpoint list above)."


def promote(services: Services, round_id: str, reason: str, request: gr.Request = None):
    promoter = services.require(request, "admin")
    checkpoint = next((c for c in services.checkpoints() if c.round_id == round_id), None)
    if checkpoint is None:  # outputs: gate, reason, overrides, all left as they are
        return refuse(pick_a_checkpoint(services), 3)
    reason = (reason or "").strip()
    unmet = unmet_candidate(services, checkpoint, services.store.current_candidate())
    blocked = checkpoint.eval is None or checkpoint.regression or unmet is not None
    if blocked and not reason:
        return refuse("Promotion is blocked by the eval gate: write the reason for overriding it, then promote.", 3)
    services.store.record_promotion(round_id, promoter, reason, overridden=bool(blocked),
                                    adapter_fingerprint=checkpoint.fingerprint)
    gr.Info(f"{round_id} is now the current candidate" + (" (gate overridden, reason recorded)." if blocked else "."))
    return gate_text(services, round_id), "", overrides_frame(services)


def run_evals(services: Services, round_id: str, baseline_system_prompt: str = "", with_retrieval: bool = False,
              request: gr.Request = None):
    services.require(request, "admin")
    if not round_id:  # outputs: gate, progress
        return refuse(pick_a_checkpoint(services), 2)
    baseline = (baseline_system_prompt or "").strip()
    if len(baseline) > 4000:
        raise user_error("The baseline system prompt is over 4000 characters.")
    corpus = services.settings.corpus_dir
    if with_retrieval and not any(corpus.glob("*")):
        raise user_error("The retrieval baseline needs a corpus: upload the documents in the Train tab first.")
    try:
        services.jobs.start_eval(round_id, baseline_system_prompt=baseline or None,
                                 baseline_retrieval=corpus.resolve() if with_retrieval else None)
    except JobBusy as exc:
        raise user_error(str(exc)) from exc
    gr.Info(f"Evals started for {round_id}: progress shows above the report, which appears when they finish.")
    return gate_text(services, round_id), progress_line(services, round_id)


CANCEL_SETTLE_S = 10  # how long Cancel waits for the job's watcher, so the line it returns is the final one


def cancel_evals(services: Services, round_id: str | None, request: gr.Request = None):
    """Cancel the running eval (never a training round: that has its own Cancel in the Train tab)."""
    admin = services.require(request, "admin")
    job = services.jobs.current
    if job is None or not job.running or job.kind != "eval":
        training = job is not None and job.running and job.kind == "train"
        raise user_error("No eval is running" + (f": {job.round_id} is a training round, cancelled from the Train tab."
                                                 if training else "."))
    gr.Info(services.jobs.cancel(by=admin, kind="eval"))
    job.handled.wait(CANCEL_SETTLE_S)
    return gate_text(services, round_id), progress_line(services, round_id)


# ---------------------------------------------------------------- the eval's progress, polled by a timer

def latest_eval(services: Services):
    """The eval job this app started (or adopted) last, running or ended; None before any."""
    return next((job for job in reversed(services.jobs.history) if job.kind == "eval"), None)


def progress_line(services: Services, round_id: str | None) -> str:
    """One line (HTML) about the evals: running with a bar, or how the last run ended. Read from the job
    and its progress files on every timer tick, so nobody has to press Refresh to learn the outcome."""
    current = services.jobs.current
    if current is not None and current.running and current.kind == "train":
        return inline_html(f"Training round `{current.round_id}` is running; its evals start by themselves "
                           "when it finishes.")
    job = latest_eval(services)
    if job is None:
        return ""
    elapsed = (job.ended or time.time()) - job.started
    if job.running:
        done, total = services.jobs.eval_progress(job)
        if not total:
            return progress_bar(0, 0, f"⏳ **Evals** of `{job.round_id}` started {elapsed:.0f} s ago: "
                                  "loading the models…")
        eta = f" · about {elapsed / done * (total - done):.0f} s left" if done else ""
        return progress_bar(done, total, f"⏳ **Evals** of `{job.round_id}` running · {done}/{total} prompts"
                                     f"{eta} · {elapsed:.0f} s elapsed")
    if services.jobs.was_cancelled(job):
        return inline_html("■ " + services.jobs.cancellation(job))
    where = ("The report is below." if job.round_id == round_id else
             f"Pick `{job.round_id}` above to read the report.")
    if job.returncode == 0:
        return inline_html(f"✅ **Evals** of `{job.round_id}` finished in {elapsed:.0f} s: no regression. {where}")
    if job.returncode == 1:  # exit 1 is the gate's verdict, not a crash
        return inline_html(f"🚩 **Evals** of `{job.round_id}` finished in {elapsed:.0f} s: a regression was "
                           f"flagged. {where}")
    error = services.jobs.progress(job.round_id, "eval").read_status().get("error") or "see the log"
    error = error.rstrip(".")  # the sentence below adds its own full stop
    return inline_html(f"⛔ **Evals** of `{job.round_id}` failed (exit {job.returncode}): {error}. "
                       f"The log: runs/{job.round_id}/eval.out.log")


def job_key(services: Services) -> list | None:
    """Which eval is the latest and whether it still runs: when this changes, the report may have."""
    job = latest_eval(services)
    return None if job is None else [job.round_id, job.started, job.running]


def watch(services: Services, round_id: str | None, seen: dict | None, request: gr.Request = None):
    """Timer: the progress line (sent only when it changed), and the whole view again when an eval
    started or ended (its report, the gate, new checkpoints in the picker)."""
    if services.role_of(request) == "annotator":
        return (gr.skip(),) * (2 + VIEW_SIZE)
    seen = seen or {}
    line, key = progress_line(services, round_id), job_key(services)
    view = refresh(services, round_id, request) if key != seen.get("job") else (gr.skip(),) * VIEW_SIZE
    return (gr.skip() if line == seen.get("line") else line), {"job": key, "line": line}, *view


OVERRIDE_COLUMNS = ["when (UTC)", "checkpoint", "promoted by", "reason", "adapter weights"]


def overrides_frame(services: Services | None) -> pd.DataFrame:
    """Every promotion that overrode a blocked gate (flagged or not evaluated), newest first."""
    promotions = services.store.promotions() if services else []
    return pd.DataFrame([[f"{p['created_at']:%Y-%m-%d %H:%M:%S}", p["round_id"], p["promoted_by"], p["reason"],
                          p.get("adapter_fingerprint") or "–"] for p in reversed(promotions) if p["overridden"]],
                        columns=OVERRIDE_COLUMNS)


def trend_view(services: Services | None) -> tuple[pd.DataFrame, str]:
    """The trend plot's data, and a line under it while it has fewer than two rounds: gradio's line
    plot draws nothing at all for a single round, which read as a broken chart. (A Markdown, not the
    plot's caption: in gradio 6.31 the caption did not show, and an update carrying one left the old
    data on screen.)"""
    frame = trend_frame(services)
    rounds = frame["round"].nunique()
    note = ("" if rounds >= 2 else "No evaluated round yet: each round's evals add a point to this plot." if rounds == 0
            else "One evaluated round so far (its figures are in the table above): the plot draws its lines "
                 "from the second.")
    return frame, note


def win_rates(services: Services | None):
    votes = services.store.vote_pairs_by_model() if services else []
    board = winrate.leaderboard(votes) if votes else []
    pair_rows = winrate.pairwise(votes) if votes else []
    return (described(pd.DataFrame(board, columns=LEADERBOARD_COLUMNS), "Ratings",
                      "No votes between two different models yet. Until a checkpoint is promoted the Arena shows "
                      "two samples of the base, which rate no model; promote one above and the Arena compares it "
                      "with the base."),
            pd.DataFrame(pair_rows, columns=PAIRWISE_COLUMNS))


def refresh(services: Services, round_id: str | None, request: gr.Request = None):
    if services.role_of(request) == "annotator":  # the Evals tab is for reviewers and admins
        # the picker is left alone: setting it fires its change event, whose role check then showed
        # every annotator an error on every page load
        return (gr.skip(), checks_table(None), "", "", "", *trend_view(None),
                *win_rates(None), overrides_frame(None))
    choices = [c.round_id for c in reversed(services.checkpoints())]
    sent, round_id = round_id, round_id if round_id in choices else (choices[0] if choices else None)
    board, pair_rows = win_rates(services)
    return (picker_update(choices, sent, round_id), *show_checkpoint(services, round_id, request),
            *trend_view(services), board, pair_rows, overrides_frame(services))


# One call at a time, in the order the pages sent them, for every listener that writes the checkpoint view
# (this tab's, and the page load's and tab select's in app.py): a reply computed for the checkpoint picked
# before never lands after the one for the checkpoint picked now (seen under load: the first timer tick's
# reply showed the newest checkpoint over the one just picked). Each call is a few reads of small files.
VIEW_IN_ORDER = dict(concurrency_id="evals-view", concurrency_limit=1)
VIEW_SIZE = 10  # what refresh returns: picker, table, notes, examples, gate, trend, its note, board, pairwise, overrides


def evals_tab(services: Services):
    with gr.Row():
        picker = gr.Dropdown([], label="Checkpoint", scale=3, elem_id="evals-picker")
        refresh_button = gr.Button("↻ Refresh", size="sm", scale=1)
        rerun = gr.Button("Run evals again", size="sm", scale=1, elem_id="evals-rerun")
        cancel = gr.Button("Cancel evals", size="sm", scale=1, variant="secondary", elem_id="evals-cancel")
    baseline = gr.Textbox(label="Baseline system prompt (optional): evals run again also answer with the base and "
                               "this system prompt, so you see whether the fine-tune beats a prompt",
                          lines=2, max_length=4000, elem_id="evals-baseline")
    with_retrieval = gr.Checkbox(label="Also against base + retrieval (the corpus uploaded in the Train tab)",
                                 value=False, elem_id="evals-with-retrieval")
    progress = gr.HTML(elem_id="evals-progress")
    gate = gr.Markdown(elem_id="evals-gate")
    columns = CHECK_COLUMNS[:-1]  # the note column is shown below the table (check_notes)
    table = gr.Dataframe(headers=columns, interactive=False, wrap=True, column_widths=column_widths(columns),
                         elem_id="evals-table")
    notes = gr.Markdown(elem_id="evals-notes")
    with gr.Row():
        reason = gr.Textbox(label="Override reason (required only when the gate blocks)", scale=4)
        promote_button = gr.Button("Promote to current candidate", variant="primary", scale=1, elem_id="evals-promote")
    overrides = gr.Dataframe(pd.DataFrame(columns=OVERRIDE_COLUMNS), interactive=False, wrap=True,
                             label="Promotions that overrode the gate (flagged or not evaluated), newest first",
                             elem_id="evals-overrides")
    with gr.Accordion("Offending examples", open=False):
        examples = gr.Markdown(elem_id="evals-examples")
    trend_points, trend_words = trend_view(services)
    trend = gr.LinePlot(trend_points, x="round", y="value", color="check", color_map=TREND_COLORS, y_lim=[0, 1],
                        tooltip=["round_id", "check", "value"],  # hovering a point names its checkpoint
                        title="Candidate value per check over rounds", height=280, elem_id="evals-trend")
    trend_note = gr.Markdown(trend_words, elem_id="evals-trend-note")
    gr.Markdown("### Human votes (Arena): Bradley-Terry ratings with 95% bootstrap intervals")
    board = gr.Dataframe(headers=LEADERBOARD_COLUMNS, interactive=False, elem_id="evals-leaderboard")
    pairwise = gr.Dataframe(headers=PAIRWISE_COLUMNS, interactive=False, label="Win rate per model pair")
    seen = gr.State(None)  # the eval job and progress line this page last showed
    timer = gr.Timer(2.0)

    in_order = dict(api_visibility="private", **VIEW_IN_ORDER)
    outputs = [picker, table, notes, examples, gate, trend, trend_note, board, pairwise, overrides]
    assert len(outputs) == VIEW_SIZE
    refresh_button.click(bind(refresh, services), picker, outputs, **in_order)
    picker.change(bind(show_checkpoint, services), picker, [table, notes, examples, gate], **in_order)
    promote_button.click(bind(promote, services), [picker, reason], [gate, reason, overrides], **in_order)
    rerun.click(bind(run_evals, services), [picker, baseline, with_retrieval], [gate, progress], **in_order)
    cancel.click(bind(cancel_evals, services), picker, [gate, progress], **in_order)
    timer.tick(bind(watch, services), [picker, seen], [progress, seen, *outputs], **in_order)
    return picker, outputs
