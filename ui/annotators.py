"""The Annotators tab (reviewers and admins): per-annotator quality signals from the votes.

Votes and median seconds per vote; tie and both-bad shares; the left side's share of decisive
votes with an exact binomial test that flags position bias; Cohen's kappa against everyone who
labeled the same comparisons (the double-labeled share of the queue, set in the Arena's admin
panel), and Krippendorff's alpha over all of them.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from labeling import agreement
from ui.services import Services, bind, counted, overlap_share

COLUMNS = ["annotator", "votes", "median s/vote", "tie", "both bad", "left wins", "position bias (p)",
           "shared votes", "kappa vs others"]


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def annotators_frame(rows: list[dict]) -> pd.DataFrame:
    table = agreement.annotator_table(rows)
    return pd.DataFrame([{
        "annotator": r["annotator"], "votes": r["votes"],
        "median s/vote": "–" if r["median_s"] is None else f"{r['median_s']:.1f}",
        "tie": percent(r["tie_share"]), "both bad": percent(r["both_bad_share"]),
        "left wins": percent(r["left_share"]),
        "position bias (p)": ("🚩 " if r["position_bias"] else "") + f"p = {r['left_p']:.3g}",
        "shared votes": r["shared"], "kappa vs others": "–" if r["kappa"] is None else f"{r['kappa']:.2f}",
    } for r in table], columns=COLUMNS)


def overall(rows: list[dict], share: float) -> str:
    agree = agreement.agreement(rows)
    alpha = agree["krippendorff_alpha"]
    votes, shared = len(rows), agree["comparisons"]
    return (f"**{counted(votes, 'vote')}**; **{counted(shared, 'comparison')} labeled by more than one annotator** "
            f"({share:.0%} of queued prompts are set to be labeled twice). Krippendorff's alpha over them: "
            f"**{'n/a (no shared comparisons yet)' if alpha is None else f'{alpha:.2f}'}**. "
            f"Position bias is flagged when the left answer's share of decisive votes has p < {agreement.BIAS_P} "
            "under no bias (exact binomial test).")


def refresh(services: Services, request: gr.Request = None):
    if services.role_of(request) not in ("reviewer", "admin"):
        return "", pd.DataFrame(columns=COLUMNS)
    rows = services.store.labeled_rows()
    return overall(rows, overlap_share(services.settings)), annotators_frame(rows)


def annotators_tab(services: Services):
    summary = gr.Markdown(elem_id="annotators-summary")
    table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, elem_id="annotators-table")
    refresh_button = gr.Button("↻ Refresh", size="sm")
    refresh_button.click(bind(refresh, services), None, [summary, table], api_visibility="private")
    return [summary, table]
