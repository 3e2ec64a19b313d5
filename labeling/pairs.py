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

What a round trains on (`training_rows`) is those rows less what the data lint
(labeling/lint.py) leaves out, the same way for every method: a comparison with
an error-level row (empty, canned, sales talk) gives no rows at all, and a row
that trains on a cut-off answer (DPO: either side; SFT: the answer; KTO: the
completion) is dropped, unless an admin includes them on purpose. Agreement
stats live in labeling/agreement.py; `lint`, `LintReport` and `LintIssue` stay
importable from here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from formats import canonical_text
from labeling.lint import CUT_OFF, RULES, LintIssue, LintReport, is_cut_off, lint

__all__ = ["CHOICES", "KINDS", "Decision", "LintIssue", "LintReport", "Snapshot", "TrainingDataReport", "build",
           "build_dpo", "build_kto", "build_sft", "lint", "nothing_left", "recorded_cut_off", "resolve_votes",
           "training_data_report", "training_rows"]

CHOICES = ("a", "b", "tie", "both_bad")
KINDS = ("dpo", "sft", "kto")
SHORT_TEXT = 200  # characters of prompt and answer kept in an `excluded` entry


@dataclass(frozen=True)
class Decision:
    """One comparison after its votes were resolved to a single choice."""

    comparison_id: str
    prompt: list[dict]
    answer_a: str
    answer_b: str
    choice: str
    edits: tuple[str, ...]  # better answers written by voters who agreed with `choice`
    cut_off: tuple[bool, bool] = (False, False)  # side a / b cut by the token limit and not trimmed back


def recorded_cut_off(params: dict | None) -> tuple[bool, bool]:
    """(a, b) cut by the token limit and NOT trimmed back to a complete sentence, from the Arena's
    `params` ({"cut_off": [a, b], "trimmed": [a, b]}); (False, False) for comparisons that predate it."""
    params = params if isinstance(params, dict) else {}
    cut, trimmed = params.get("cut_off"), params.get("trimmed")
    if not isinstance(cut, (list, tuple)) or len(cut) != 2:
        return (False, False)
    if not isinstance(trimmed, (list, tuple)) or len(trimmed) != 2:
        trimmed = (False, False)
    return (bool(cut[0]) and not trimmed[0], bool(cut[1]) and not trimmed[1])


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
        # compared as read: an "edit" that only adds a zero-width space is no edit
        originals = {canonical_text(first["answer_a"]), canonical_text(first["answer_b"])}
        edits, seen = [], set()
        for vote in votes:
            edit = (vote.get("better_answer") or "").strip()
            if vote["choice"] == choice and canonical_text(edit) and canonical_text(edit) not in originals | seen:
                edits.append(edit)
                seen.add(canonical_text(edit))
        decisions.append(Decision(comparison_id, with_system_prompt(first), first["answer_a"], first["answer_b"],
                                  choice, tuple(edits), recorded_cut_off(first.get("params"))))
    report = {"votes": len(rows), "comparisons": len(groups), "used": len(decisions),
              "conflicts": conflicts, "dropped_split": sum(c["resolution"] == "dropped" for c in conflicts)}
    return decisions, report


def with_system_prompt(row: dict) -> list[dict]:
    """The prompt as the model saw it: a system prompt set in the sampling settings shaped both
    answers, so the training row keeps it."""
    messages = row["messages"]
    system = ((row.get("params") or {}).get("system_prompt") or "").strip()
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _winner_loser(d: Decision) -> tuple[str, str] | None:
    if d.choice not in ("a", "b") or d.answer_a.strip() == d.answer_b.strip():
        return None  # identical answers carry no preference, whatever was clicked
    return (d.answer_a, d.answer_b) if d.choice == "a" else (d.answer_b, d.answer_a)


def _dpo_rows(d: Decision) -> list[dict]:
    out = []
    pair = _winner_loser(d)
    if pair:
        out.append({"prompt": d.prompt, "chosen": _assistant(pair[0]), "rejected": _assistant(pair[1])})
    for edit in d.edits:
        for original in dict.fromkeys((d.answer_a, d.answer_b)):  # once if both sides are identical
            out.append({"prompt": d.prompt, "chosen": _assistant(edit), "rejected": _assistant(original)})
    return out


def _sft_rows(d: Decision) -> list[dict]:
    pair = _winner_loser(d)
    # a human-written answer beats "better of two"; it goes first when both exist
    return [{"messages": d.prompt + _assistant(answer)} for answer in list(d.edits) + ([pair[0]] if pair else [])]


def _kto_rows(d: Decision) -> list[dict]:
    out = []

    def add(text: str, label: bool) -> None:
        out.append({"prompt": d.prompt, "completion": _assistant(text), "label": label})

    pair = _winner_loser(d)
    if pair:
        add(pair[0], True)
        add(pair[1], False)
    elif d.choice == "both_bad":
        for answer in dict.fromkeys((d.answer_a, d.answer_b)):
            add(answer, False)
    for edit in d.edits:
        add(edit, True)
    return out


_ROWS = {"dpo": _dpo_rows, "sft": _sft_rows, "kto": _kto_rows}


def _check_kind(kind: str) -> None:
    if kind not in _ROWS:
        raise ValueError(f"unknown format {kind!r}; expected one of {', '.join(KINDS)}")


def build(kind: str, rows: list[dict]) -> tuple[list[dict], dict]:
    """Every row the votes give, nothing left out (exports); a round trains on `training_rows`."""
    _check_kind(kind)
    decisions, report = resolve_votes(rows)
    out = [row for d in decisions for row in _ROWS[kind](d)]
    report["rows"] = len(out)
    return out, report


def build_dpo(rows: list[dict]) -> tuple[list[dict], dict]:
    return build("dpo", rows)


def build_sft(rows: list[dict]) -> tuple[list[dict], dict]:
    return build("sft", rows)


def build_kto(rows: list[dict]) -> tuple[list[dict], dict]:
    return build("kto", rows)


@dataclass(frozen=True)
class TrainingDataReport:
    """What a DPO or SFT round would train on, as the Train tab shows it before a start. Treat as read-only:
    Store.training_data_report() hands the same object to every caller until the next write."""

    votes: int
    dpo_rows: int  # every pair the votes give
    sft_rows: int
    build_report: dict  # build("dpo", ...)'s report: votes, comparisons, used, conflicts, dropped_split, rows
    lint: LintReport  # of the DPO pairs (every SFT answer is the chosen side of one), with comparison ids
    # comparisons a round leaves out by default, one dict each: comparison_id, code, reason, prompt, answer
    # (shortened), and methods (["dpo", "sft"], or ["dpo"] when only a rejected answer was cut off)
    excluded: list[dict] = field(default_factory=list)
    usable_dpo: int = 0  # rows left after the default exclusions
    usable_sft: int = 0
    decisions: tuple[Decision, ...] = field(default=(), repr=False)  # what training_rows selects from


@dataclass(frozen=True)
class Snapshot:
    """A training file written for a round (Store.training_snapshot) and what was left out of it."""

    path: Path  # immutable, named by the hash of its rows; <path>.manifest.json lies beside it
    rows: int
    excluded: list[dict]  # one per comparison left out: comparison_id, code, reason, prompt, answer (shortened)


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHORT_TEXT else text[: SHORT_TEXT - 1] + "…"


def _prompt_text(d: Decision) -> str:
    return str(d.prompt[-1].get("content") or "") if d.prompt else ""


def _trained_texts(kind: str, row: dict) -> list[tuple[str, str]]:
    """(lint code if cut off, answer text) for each answer a row trains on."""
    if kind == "dpo":
        return [("truncated_chosen", row["chosen"][-1]["content"]),
                ("truncated_rejected", row["rejected"][-1]["content"])]
    if kind == "sft":
        return [("truncated_chosen", row["messages"][-1]["content"])]
    return [("truncated_chosen" if row["label"] else "truncated_rejected", row["completion"][-1]["content"])]


def _recorded(d: Decision, text: str) -> bool:
    return (text == d.answer_a and d.cut_off[0]) or (text == d.answer_b and d.cut_off[1])


def training_rows(report: TrainingDataReport, kind: str, *, include_flagged: bool = False,
                  include_cut_off: bool = False) -> tuple[list[dict], list[dict]]:
    """(rows a `kind` round trains on, one `excluded` dict per comparison left out of them).

    A comparison with an error-level lint row gives no rows to any method unless `include_flagged`;
    a row that trains on a cut-off answer is dropped unless `include_cut_off`.
    """
    _check_kind(kind)
    flagged: dict[str, tuple[str, str]] = {}  # comparison id -> (code, answer) of its first error
    if not include_flagged:
        for issue in report.lint.errors:
            for row in issue.rows:
                if row["comparison_id"] is not None:
                    flagged.setdefault(row["comparison_id"], (issue.code, row["answer"]))
    rows, excluded = [], {}

    def leave_out(d: Decision, code: str, answer: str) -> None:
        excluded.setdefault(d.comparison_id, {"comparison_id": d.comparison_id, "code": code,
                                              "reason": RULES[code][1], "prompt": short(_prompt_text(d)),
                                              "answer": short(answer)})

    for d in report.decisions:
        if d.comparison_id in flagged:
            leave_out(d, *flagged[d.comparison_id])
            continue
        for row in _ROWS[kind](d):
            cut = None if include_cut_off else next(((code, text) for code, text in _trained_texts(kind, row)
                                                     if is_cut_off(text, _recorded(d, text))), None)
            if cut:
                leave_out(d, *cut)
            else:
                rows.append(row)
    return rows, list(excluded.values())


def nothing_left(kind: str, excluded: list[dict]) -> str:
    """Why a `kind` round has no rows: nothing labeled yet, or everything left out (and how to go on)."""
    if not excluded:
        return f"no {kind.upper()} rows to train on: label some comparisons in the Arena first"
    cut = sum(e["code"] in CUT_OFF for e in excluded)
    reviewed = sum(e["code"] == "excluded_by_reviewer" for e in excluded)
    return (f"no {kind.upper()} rows left to train on: all {len(excluded)} comparisons that give them were "
            f"left out ({len(excluded) - cut - reviewed} flagged by the data lint, {cut} cut off"
            + (f", {reviewed} excluded by reviewers" if reviewed else "") + "). "
            "Label more in the Arena, or include them on purpose (include flagged / cut-off answers).")


def training_data_report(rows: list[dict]) -> TrainingDataReport:
    """Build the DPO and SFT rows from labeled votes, lint the DPO pairs, and count what a round leaves out."""
    decisions, report = resolve_votes(rows)
    dpo_rows, ids, cuts = [], [], []
    for d in decisions:
        for row in _dpo_rows(d):
            dpo_rows.append(row)
            ids.append(d.comparison_id)
            cuts.append((_recorded(d, row["chosen"][-1]["content"]), _recorded(d, row["rejected"][-1]["content"])))
    report["rows"] = len(dpo_rows)
    sft_rows = sum(len(_sft_rows(d)) for d in decisions)
    full = TrainingDataReport(len(rows), len(dpo_rows), sft_rows, report, lint(dpo_rows, ids, cuts),
                              decisions=tuple(decisions))
    usable, excluded = {}, {}
    for kind in ("dpo", "sft"):
        kept, left_out = training_rows(full, kind)
        usable[kind] = len(kept)
        for entry in left_out:
            excluded.setdefault(entry["comparison_id"], {**entry, "methods": []})["methods"].append(kind)
    return replace(full, excluded=list(excluded.values()), usable_dpo=usable["dpo"], usable_sft=usable["sft"])
