"""Evals tab: each checkpoint's automatic checks against the base, the promotion
gate, a trend over rounds, and human-vote win rates beside them."""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from evals import winrate
from evals.report import BASELINES
from pipeline import JobBusy
from ui.services import Services, bind

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
    columns: its figure and whether the candidate beats it."""
    baselines = {name: label for name, label in BASELINES.items() if report and report.get(name)}
    columns = CHECK_COLUMNS[:4] + [c for label in baselines.values() for c in (label, f"vs {label}")] + CHECK_COLUMNS[4:]
    if not report:
        return pd.DataFrame(columns=columns)
    rows = [
        {
            "check": name,
            "flag": "🚩 REGRESSION" if check.get("flagged") else "⚠️ warning" if check.get("warning") else "ok",
            "base": number(check.get("base")),
            "candidate": number(check.get("candidate")),
            **{label: number(check.get(key)) for key, label in baselines.items()},
            **{f"vs {label}": versus(check, key) for key, label in baselines.items()},
            "note": note(check),
        }
        for name, check in report.get("checks", {}).items()
    ]
    return pd.DataFrame(rows, columns=columns)


def examples_markdown(report: dict | None) -> str:
    if not report:
        return ""
    parts = []
    for name, check in report.get("checks", {}).items():
        if not check.get("flagged") or not check.get("examples"):
            continue
        parts.append(f"#### {name}")
        for example in check["examples"][:3]:
            parts.append("```json\n" + json.dumps(example, indent=1, ensure_ascii=False)[:1500] + "\n```")
    return "\n".join(parts) or "No flagged examples."


# Checks whose figures are shares in [0, 1], so they share one axis (length_shift is in words).
TREND_CHECKS = ["canned_reply", "sales_talk", "repetition", "rouge_l", "empty_answers", "refusal_rate"]
TREND_COLORS = dict(zip(TREND_CHECKS, ["#dc2626", "#f97316", "#9333ea", "#2563eb", "#6b7280", "#16a34a"]))
LEADERBOARD_COLUMNS = ["model", "rating", "ci_low", "ci_high", "n_votes", "win_rate"]
PAIRWISE_COLUMNS = ["model_a", "model_b", "n_votes", "a_wins", "b_wins", "ties", "both_bad", "a_win_rate"]


def trend_frame(services: Services) -> pd.DataFrame:
    """Candidate value of every share-valued check, one point per evaluated round."""
    points = []
    for index, checkpoint in enumerate(services.checkpoints() if services else [], 1):
        for name, check in ((checkpoint.eval or {}).get("checks") or {}).items():
            if name in TREND_COLORS and isinstance(check.get("candidate"), (int, float)):
                points.append({"round": index, "value": float(check["candidate"]), "check": name,
                               "round_id": checkpoint.round_id})
    frame = pd.DataFrame(points, columns=["round", "value", "check", "round_id"])
    # typed even when empty, so the plot starts with numeric axes rather than categorical ones
    return frame.astype({"round": int, "value": float, "check": str, "round_id": str})


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
    if checkpoint.regression:
        flagged = [n for n, c in checkpoint.eval.get("checks", {}).items() if c.get("flagged")]
        return head + f"🚩 **Promotion blocked**: flagged {', '.join(flagged)}. An admin may override with a written reason."
    warnings = checkpoint.eval.get("warnings") or []
    note = f" Warning: {', '.join(warnings)} changed, with no quality drop (a change of style, not a regression)." if warnings else ""
    prompted = checkpoint.eval.get("prompted_base")
    if prompted:
        note += f"\n\nAgainst the base with the system prompt “{prompted['system_prompt'][:80]}”: {prompted['summary']}."
    retrieval = checkpoint.eval.get("retrieval_base")
    if retrieval:
        note += f"\n\nAgainst the base with the top {retrieval.get('k')} passages of the corpus: {retrieval['summary']}."
    return head + "✅ **All checks pass**: this checkpoint can be promoted." + note


def show_checkpoint(services: Services, round_id: str | None, request: gr.Request = None):
    services.require(request, "reviewer")
    checkpoint = next((c for c in services.checkpoints() if c.round_id == round_id), None)
    report = checkpoint.eval if checkpoint else None
    return checks_frame(report), examples_markdown(report), gate_text(services, round_id)


def promote(services: Services, round_id: str, reason: str, request: gr.Request = None):
    promoter = services.require(request, "admin")
    checkpoint = next((c for c in services.checkpoints() if c.round_id == round_id), None)
    if checkpoint is None:
        raise gr.Error("Pick a checkpoint first.")
    reason = (reason or "").strip()
    blocked = checkpoint.eval is None or checkpoint.regression
    if blocked and not reason:
        raise gr.Error("Promotion is blocked by the eval gate: write the reason for overriding it, then promote.")
    services.store.record_promotion(round_id, promoter, reason, overridden=bool(blocked),
                                    adapter_fingerprint=checkpoint.fingerprint)
    gr.Info(f"{round_id} is now the current candidate" + (" (gate overridden, reason recorded)." if blocked else "."))
    return gate_text(services, round_id), "", overrides_frame(services)


def run_evals(services: Services, round_id: str, baseline_system_prompt: str = "", with_retrieval: bool = False,
              request: gr.Request = None):
    services.require(request, "admin")
    if not round_id:
        raise gr.Error("Pick a checkpoint first.")
    baseline = (baseline_system_prompt or "").strip()
    if len(baseline) > 4000:
        raise gr.Error("The baseline system prompt is over 4000 characters.")
    corpus = services.settings.corpus_dir
    if with_retrieval and not any(corpus.glob("*")):
        raise gr.Error("The retrieval baseline needs a corpus: upload the documents in the Train tab first.")
    try:
        services.jobs.start_eval(round_id, baseline_system_prompt=baseline or None,
                                 baseline_retrieval=corpus.resolve() if with_retrieval else None)
    except JobBusy as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"Evals started for {round_id}; the report appears here when done (a few minutes).")
    return gate_text(services, round_id)


OVERRIDE_COLUMNS = ["when (UTC)", "checkpoint", "promoted by", "reason", "adapter weights"]


def overrides_frame(services: Services | None) -> pd.DataFrame:
    """Every promotion that overrode a blocked gate (flagged or not evaluated), newest first."""
    promotions = services.store.promotions() if services else []
    return pd.DataFrame([[f"{p['created_at']:%Y-%m-%d %H:%M:%S}", p["round_id"], p["promoted_by"], p["reason"],
                          p.get("adapter_fingerprint") or "–"] for p in reversed(promotions) if p["overridden"]],
                        columns=OVERRIDE_COLUMNS)


def win_rates(services: Services | None):
    votes = services.store.vote_pairs_by_model() if services else []
    board = winrate.leaderboard(votes) if votes else []
    pair_rows = winrate.pairwise(votes) if votes else []
    return pd.DataFrame(board, columns=LEADERBOARD_COLUMNS), pd.DataFrame(pair_rows, columns=PAIRWISE_COLUMNS)


def refresh(services: Services, round_id: str | None, request: gr.Request = None):
    if services.role_of(request) == "annotator":  # the Evals tab is for reviewers and admins
        return (gr.update(choices=[], value=None), checks_frame(None), "", "", trend_frame(None), *win_rates(None),
                overrides_frame(None))
    choices = [c.round_id for c in reversed(services.checkpoints())]
    round_id = round_id if round_id in choices else (choices[0] if choices else None)
    board, pair_rows = win_rates(services)
    return (gr.update(choices=choices, value=round_id), *show_checkpoint(services, round_id, request),
            trend_frame(services), board, pair_rows, overrides_frame(services))


def evals_tab(services: Services):
    with gr.Row():
        picker = gr.Dropdown([], label="Checkpoint", scale=3, elem_id="evals-picker")
        refresh_button = gr.Button("↻ Refresh", size="sm", scale=1)
        rerun = gr.Button("Run evals again", size="sm", scale=1)
    baseline = gr.Textbox(label="Baseline system prompt (optional): evals run again also answer with the base and "
                               "this system prompt, so you see whether the fine-tune beats a prompt",
                          lines=2, max_length=4000, elem_id="evals-baseline")
    with_retrieval = gr.Checkbox(label="Also against base + retrieval (the corpus uploaded in the Train tab)",
                                 value=False, elem_id="evals-with-retrieval")
    gate = gr.Markdown(elem_id="evals-gate")
    table = gr.Dataframe(headers=CHECK_COLUMNS, interactive=False, wrap=True, elem_id="evals-table")
    with gr.Row():
        reason = gr.Textbox(label="Override reason (required only when the gate blocks)", scale=4)
        promote_button = gr.Button("Promote to current candidate", variant="primary", scale=1, elem_id="evals-promote")
    overrides = gr.Dataframe(pd.DataFrame(columns=OVERRIDE_COLUMNS), interactive=False, wrap=True,
                             label="Promotions that overrode the gate (flagged or not evaluated), newest first",
                             elem_id="evals-overrides")
    with gr.Accordion("Offending examples", open=False):
        examples = gr.Markdown()
    trend = gr.LinePlot(trend_frame(services), x="round", y="value", color="check", color_map=TREND_COLORS, y_lim=[0, 1],
                        tooltip=["round_id", "check", "value"],  # hovering a point names its checkpoint
                        title="Candidate value per check over rounds", height=280)
    gr.Markdown("### Human votes (Arena): Bradley-Terry ratings with 95% bootstrap intervals")
    board = gr.Dataframe(headers=LEADERBOARD_COLUMNS, interactive=False, elem_id="evals-leaderboard")
    pairwise = gr.Dataframe(headers=PAIRWISE_COLUMNS, interactive=False, label="Win rate per model pair")

    private = dict(api_visibility="private")
    outputs = [picker, table, examples, gate, trend, board, pairwise, overrides]
    refresh_button.click(bind(refresh, services), picker, outputs, **private)
    picker.change(bind(show_checkpoint, services), picker, [table, examples, gate], **private)
    promote_button.click(bind(promote, services), [picker, reason], [gate, reason, overrides], **private)
    rerun.click(bind(run_evals, services), [picker, baseline, with_retrieval], gate, **private)
    return picker, outputs
