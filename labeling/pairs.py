"""Votes -> training rows in TRL's conversational formats, and what a round would train on.

Pure functions, no database: the store hands in `labeled_rows()` (one dict per
vote, joined with its comparison) and writes whatever comes back. Keeping the
rules here means they are tested without DuckDB and read in one place:

- a/b win      -> DPO pair (chosen = winner); SFT row for the winner; KTO +winner / -loser
- edited answer (differs from both originals)
               -> SFT row, KTO positive, and a DPO pair against EACH original
- tie          -> nothing from the originals (no preference signal)
- both_bad     -> KTO negatives for both originals
- several votes on one comparison -> majority choice; an exact split is dropped.

The data lint lives in labeling/lint.py and agreement stats in
labeling/agreement.py; `lint`, `LintReport` and `LintIssue` stay importable
from here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from labeling.lint import LintIssue, LintReport, lint

__all__ = ["CHOICES", "KINDS", "Decision", "LintIssue", "LintReport", "TrainingDataReport", "build", "build_dpo",
           "build_kto", "build_sft", "lint", "resolve_votes", "training_data_report"]

CHOICES = ("a", "b", "tie", "both_bad")
KINDS = ("dpo", "sft", "kto")


@dataclass(frozen=True)
class Decision:
    """One comparison after its votes were resolved to a single choice."""

    comparison_id: str
    prompt: list[dict]
    answer_a: str
    answer_b: str
    choice: str
    edits: tuple[str, ...]  # better answers written by voters who agreed with `choice`


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def resolve_votes(rows: list[dict]) -> tuple[list[Decision], dict]:
    """Group votes by comparison and resolve each group by majority."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:  # dicts keep first-seen order, so output order follows the votes
        groups[row["comparison_id"]].append(row)
    decisions, conflicts = [], []
    for comparison_id, votes in groups.items():
        counts = Counter(v["choice"] for v in votes)
        ranked = counts.most_common()
        split = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
        choice = None if split else ranked[0][0]
        if len(ranked) > 1:
            conflicts.append({"comparison_id": comparison_id, "choices": dict(counts),
                              "resolution": "dropped" if split else f"majority:{choice}"})
        if split:
            continue
        first = votes[0]
        originals = {first["answer_a"].strip(), first["answer_b"].strip()}
        edits = []
        for vote in votes:
            edit = (vote.get("better_answer") or "").strip()
            if vote["choice"] == choice and edit and edit not in originals and edit not in edits:
                edits.append(edit)
        decisions.append(Decision(comparison_id, first["messages"], first["answer_a"], first["answer_b"],
                                  choice, tuple(edits)))
    report = {"votes": len(rows), "comparisons": len(groups), "used": len(decisions),
              "conflicts": conflicts, "dropped_split": sum(c["resolution"] == "dropped" for c in conflicts)}
    return decisions, report


def _winner_loser(d: Decision) -> tuple[str, str] | None:
    if d.choice not in ("a", "b") or d.answer_a.strip() == d.answer_b.strip():
        return None  # identical answers carry no preference, whatever was clicked
    return (d.answer_a, d.answer_b) if d.choice == "a" else (d.answer_b, d.answer_a)


def build_dpo(rows: list[dict]) -> tuple[list[dict], dict]:
    decisions, report = resolve_votes(rows)
    out = []
    for d in decisions:
        pair = _winner_loser(d)
        if pair:
            out.append({"prompt": d.prompt, "chosen": _assistant(pair[0]), "rejected": _assistant(pair[1])})
        for edit in d.edits:
            for original in dict.fromkeys((d.answer_a, d.answer_b)):  # once if both sides are identical
                out.append({"prompt": d.prompt, "chosen": _assistant(edit), "rejected": _assistant(original)})
    report["rows"] = len(out)
    return out, report


def build_sft(rows: list[dict]) -> tuple[list[dict], dict]:
    decisions, report = resolve_votes(rows)
    out = []
    for d in decisions:
        pair = _winner_loser(d)
        # a human-written answer beats "better of two"; it goes first when both exist
        for answer in list(d.edits) + ([pair[0]] if pair else []):
            out.append({"messages": d.prompt + _assistant(answer)})
    report["rows"] = len(out)
    return out, report


def build_kto(rows: list[dict]) -> tuple[list[dict], dict]:
    decisions, report = resolve_votes(rows)
    out = []

    def add(d: Decision, text: str, label: bool) -> None:
        out.append({"prompt": d.prompt, "completion": _assistant(text), "label": label})

    for d in decisions:
        pair = _winner_loser(d)
        if pair:
            add(d, pair[0], True)
            add(d, pair[1], False)
        elif d.choice == "both_bad":
            for answer in dict.fromkeys((d.answer_a, d.answer_b)):
                add(d, answer, False)
        for edit in d.edits:
            add(d, edit, True)
    report["rows"] = len(out)
    return out, report


def build(kind: str, rows: list[dict]) -> tuple[list[dict], dict]:
    builders = {"dpo": build_dpo, "sft": build_sft, "kto": build_kto}
    if kind not in builders:
        raise ValueError(f"unknown format {kind!r}; expected one of {', '.join(KINDS)}")
    return builders[kind](rows)


@dataclass(frozen=True)
class TrainingDataReport:
    """What a DPO or SFT round would train on, as the Train tab shows it before a start. Treat as read-only:
    Store.training_data_report() hands the same object to every caller until the next write."""

    votes: int
    dpo_rows: int
    sft_rows: int
    build_report: dict  # build("dpo", ...)'s report: votes, comparisons, used, conflicts, dropped_split, rows
    lint: LintReport  # of the DPO pairs


def training_data_report(rows: list[dict]) -> TrainingDataReport:
    """Build the DPO and SFT rows from labeled votes and lint the DPO pairs."""
    dpo_rows, report = build("dpo", rows)
    sft_rows, _ = build("sft", rows)
    return TrainingDataReport(len(rows), len(dpo_rows), len(sft_rows), report, lint(dpo_rows))
