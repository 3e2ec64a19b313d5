"""Review (a section of the Annotators tab, reviewers and admins): take votes out of training.

A reviewer picks a comparison (from what the data lint flags, or from the recent votes), writes
why, and excludes it: its votes leave every export and every round's snapshot (labeling/review.py)
until a reviewer lifts the exclusion, which is recorded too. The lint's rows name their
comparisons here, so "this pair is garbage" can be acted on without touching the database.
Every handler checks the role on the server: hiding the tab is not a check.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from labeling.store import StoreWriteError
from ui.services import Services, bind, described, refuse, user_error

LINT_COLUMNS = ["comparison", "severity", "check", "prompt", "answer"]
VOTE_COLUMNS = ["comparison", "annotator", "choice", "voted at (UTC)", "prompt"]
EXCLUDED_COLUMNS = ["comparison", "excluded by", "at (UTC)", "why", "votes held back", "prompt"]
HISTORY_COLUMNS = ["comparison", "action", "by", "at (UTC)", "why"]
RECENT_VOTES = 50
SHOWN_CHARS = 90


def clip(text) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def prompt_of(messages) -> str:
    return clip(messages[-1]["content"]) if messages else ""


def lint_frame(services: Services) -> pd.DataFrame:
    rows = services.store.training_data_report().lint.to_frame_rows()  # cached until the next write
    return pd.DataFrame([[r["comparison_id"], r["severity"], r["code"], clip(r["prompt"]), clip(r["answer"])]
                         for r in rows], columns=LINT_COLUMNS)


def votes_frame(services: Services) -> pd.DataFrame:
    rows = services.store.labeled_rows()[-RECENT_VOTES:][::-1]  # newest first; excluded ones are already out
    return pd.DataFrame([[r["comparison_id"], r["annotator"], r["choice"], when(r["created_at"]),
                          prompt_of(r["messages"])] for r in rows], columns=VOTE_COLUMNS)


def excluded_frame(services: Services) -> pd.DataFrame:
    return pd.DataFrame([[e["comparison_id"], e["by_user"], when(e["created_at"]), e["reason"], e["votes"],
                          prompt_of(e["messages"])] for e in services.store.exclusions()], columns=EXCLUDED_COLUMNS)


def history_frame(services: Services) -> pd.DataFrame:
    return pd.DataFrame([[h["comparison_id"], h["action"], h["by_user"], when(h["created_at"]), h["reason"]]
                         for h in services.store.exclusion_history()], columns=HISTORY_COLUMNS)


LINT_LABEL = "Flagged by the data lint (errors are left out of rounds; exclude to settle them)"
VOTES_LABEL = f"Recent votes (the newest {RECENT_VOTES}, excluded ones not shown)"
EXCLUDED_LABEL = "Excluded from training now"
LINT_EMPTY = ("Flagged by the data lint: nothing so far (canned, empty or sales-talk answers and cut-off "
              "pairs would be listed here)")
VOTES_EMPTY = "Recent votes: none yet (they appear here as annotators vote in the Arena)"
EXCLUDED_EMPTY = "Excluded from training now: nothing (click a row above, write why, then Exclude from training)"
TABLE_COLUMNS = (LINT_COLUMNS, VOTE_COLUMNS, EXCLUDED_COLUMNS, HISTORY_COLUMNS)  # the four tables, in output order


def tables(services: Services) -> tuple:
    return (described(lint_frame(services), LINT_LABEL, LINT_EMPTY),
            described(votes_frame(services), VOTES_LABEL, VOTES_EMPTY),
            described(excluded_frame(services), EXCLUDED_LABEL, EXCLUDED_EMPTY), history_frame(services))


def empty_tables() -> tuple:
    return tuple(pd.DataFrame(columns=c) for c in TABLE_COLUMNS)


def refresh_review(services: Services, request: gr.Request = None):
    """The four tables, for reviewers and admins; empty ones for anyone else."""
    if services.role_of(request) not in ("reviewer", "admin"):
        return empty_tables()
    return tables(services)


def decide(services: Services, action: str, comparison_id: str, reason: str, request: gr.Request = None):
    """Exclude or lift; outputs: status, comparison box, reason box, the four tables."""
    reviewer = services.require(request, "reviewer")
    comparison_id = (comparison_id or "").strip()
    try:
        if action == "exclude":
            changed = services.store.exclude(comparison_id, reviewer, reason)
            status = (f"🚫 Excluded `{comparison_id}`: its votes leave every export and the next round."
                      if changed else f"`{comparison_id}` was excluded already.")
        else:
            changed = services.store.lift_exclusion(comparison_id, reviewer, reason)
            status = (f"↩️ Exclusion of `{comparison_id}` lifted: its votes count again."
                      if changed else f"`{comparison_id}` is not excluded: nothing to lift.")
    except ValueError as exc:  # the id or the reason: the page, its tables included, stays as it was
        return refuse(f"Not {'excluded' if action == 'exclude' else 'lifted'}: {exc}", 3 + len(TABLE_COLUMNS))
    except StoreWriteError as exc:
        raise user_error(f"Not {'excluded' if action == 'exclude' else 'lifted'}: {exc}") from exc
    # the id stays in its box, so "Lift the exclusion" right after an exclude undoes it (an emptied box
    # refused the lift); the reason is cleared: the next decision needs its own
    return status, comparison_id, "", *tables(services)


def exclude_vote(services: Services, comparison_id: str, reason: str, request: gr.Request = None):
    return decide(services, "exclude", comparison_id, reason, request)


def lift_exclusion(services: Services, comparison_id: str, reason: str, request: gr.Request = None):
    return decide(services, "lift", comparison_id, reason, request)


def pick(evt: gr.SelectData) -> str:
    """A click on any cell of a lint, vote or exclusion row puts its comparison id in the box."""
    row = evt.row_value or []
    return row[0] if row else gr.skip()


def review_section(services: Services) -> list:
    """The Review section; returns the outputs `refresh_review` fills (app.py refreshes them on tab select)."""
    gr.Markdown("### Review: keep bad votes out of training\nClick a row to pick its comparison, write why, "
                "and exclude it: its votes leave every export and the next round's snapshot (the snapshot's "
                "manifest names it). Lifting an exclusion puts them back; both are recorded with who and why.")
    with gr.Row():
        comparison = gr.Textbox(label="Comparison id", scale=2, elem_id="review-comparison")
        reason = gr.Textbox(label="Why (required to exclude)", scale=3, max_length=2000, elem_id="review-reason")
        with gr.Column(scale=1, min_width=140):
            exclude_button = gr.Button("Exclude from training", variant="stop", size="sm", elem_id="review-exclude")
            lift_button = gr.Button("Lift the exclusion", size="sm", elem_id="review-lift")
    status = gr.Markdown(elem_id="review-status")
    lint = gr.Dataframe(pd.DataFrame(columns=LINT_COLUMNS), interactive=False, wrap=True, elem_id="review-lint",
                        label=LINT_LABEL)
    votes = gr.Dataframe(pd.DataFrame(columns=VOTE_COLUMNS), interactive=False, wrap=True, elem_id="review-votes",
                         label=VOTES_LABEL,
                         column_widths=["27%", "13%", "11%", "17%", "32%"])  # auto widths broke "annotator" mid-word
    excluded = gr.Dataframe(pd.DataFrame(columns=EXCLUDED_COLUMNS), interactive=False, wrap=True,
                            elem_id="review-exclusions", label=EXCLUDED_LABEL)
    with gr.Accordion("Every exclusion and lift", open=False):
        history = gr.Dataframe(pd.DataFrame(columns=HISTORY_COLUMNS), interactive=False, wrap=True,
                               elem_id="review-history")
    outputs = [lint, votes, excluded, history]
    private = dict(api_visibility="private")
    for table in (lint, votes, excluded):
        table.select(pick, None, comparison, **private)
    exclude_button.click(bind(exclude_vote, services), [comparison, reason], [status, comparison, reason, *outputs],
                         **private)
    lift_button.click(bind(lift_exclusion, services), [comparison, reason], [status, comparison, reason, *outputs],
                      **private)
    gr.Button("↻ Refresh the review", size="sm").click(bind(refresh_review, services), None, outputs, **private)
    return outputs
