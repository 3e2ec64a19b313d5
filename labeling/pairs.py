"""Votes -> training rows in TRL's conversational formats, a data lint, agreement stats.

Pure functions, no database: the store hands in `labeled_rows()` (one dict per
vote, joined with its comparison) and writes whatever comes back. Keeping the
rules here means they are tested without DuckDB and read in one place:

- a/b win      -> DPO pair (chosen = winner); SFT row for the winner; KTO +winner / -loser
- edited answer (differs from both originals)
               -> SFT row, KTO positive, and a DPO pair against EACH original
- tie          -> nothing from the originals (no preference signal)
- both_bad     -> KTO negatives for both originals
- several votes on one comparison -> majority choice; an exact split is dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from evals.checks import is_canned_greeting
from evals.sales import are_sales_talk

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


# ---- data lint ---------------------------------------------------------------

LENGTH_RATIO_LIMIT = 8.0
# One stray canned/sales "chosen" answer is noise the loss absorbs; a pattern is
# what teaches collapse or pitching, so past this share it blocks the round.
PATTERN_ERROR_SHARE = 0.05
TRUNCATION_MIN_WORDS = 20  # short answers ("Paris") legitimately skip final punctuation
SENTENCE_END = tuple('.!?…"\'”’)]}>*`') + ("。", "！", "？")
LIST_OR_TABLE_LINE = re.compile(r"^\s*([-*+|•]|\d+[.)])")


@dataclass(frozen=True)
class LintIssue:
    severity: str  # "error" blocks a round; "warning" is shown to the admin
    code: str
    message: str
    examples: tuple[int, ...]  # row indices, capped
    count: int = 0
    sample: str = ""  # an excerpt of the first offending text, for the UI


@dataclass(frozen=True)
class LintReport:
    rows: int
    issues: tuple[LintIssue, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"rows": self.rows, "ok": self.ok,
                "issues": [{"severity": i.severity, "code": i.code, "message": i.message, "count": i.count,
                            "examples": list(i.examples), "sample": i.sample} for i in self.issues]}

    def summary(self) -> str:
        verdict = "ok" if self.ok else "NOT ok"
        return f"lint {verdict}: {self.rows} rows, {len(self.errors)} errors, {len(self.warnings)} warnings"

    def to_markdown(self) -> str:
        lines = [f"**Data lint: {len(self.errors)} errors, {len(self.warnings)} warnings** ({self.rows} pairs)"]
        if not self.issues:
            return lines[0] + "\n\nNo issues found."
        lines += ["", "| severity | check | rows | message | examples |", "|---|---|---|---|---|"]
        for i in self.issues:
            message = i.message.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {i.severity} | `{i.code}` | {i.count} | {message} | {', '.join(map(str, i.examples[:5]))} |")
        return "\n".join(lines)


def looks_truncated(text: str) -> bool:
    """Heuristic: a long answer that stops without closing its sentence or code block."""
    text = text.rstrip()
    if len(text.split()) < TRUNCATION_MIN_WORDS:
        return False
    if text.count("```") % 2 == 1:
        return True  # cut inside a code block
    if text.endswith("```"):
        return False
    if LIST_OR_TABLE_LINE.match(text.splitlines()[-1]):
        return False  # lists and tables routinely end without punctuation
    return not text.endswith(SENTENCE_END)


def _text(messages) -> str:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content") or "")
    return ""


def lint(dpo_rows: list[dict]) -> LintReport:
    found: dict[str, list[int]] = defaultdict(list)
    samples: dict[str, str] = {}

    def flag(code: str, index: int, text: str) -> None:
        found[code].append(index)
        samples.setdefault(code, " ".join(text.split())[:80])

    # one batched call: the semantic sales detector embeds all chosen answers at once
    sales = are_sales_talk([_text(r.get("chosen")) for r in dpo_rows], [_text(r.get("prompt")) for r in dpo_rows])
    seen = set()
    for index, row in enumerate(dpo_rows):
        chosen, rejected = _text(row.get("chosen")), _text(row.get("rejected"))
        key = json.dumps([row.get("prompt"), chosen, rejected], sort_keys=True)
        if key in seen:
            flag("duplicate", index, chosen)
        seen.add(key)
        if not chosen.strip() or not rejected.strip():
            flag("empty_answer", index, chosen or rejected)
            continue  # the remaining checks are meaningless on an empty side
        if chosen.strip() == rejected.strip():
            flag("chosen_equals_rejected", index, chosen)
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            if looks_truncated(text):
                flag(f"truncated_{side}", index, text)
        short, long = sorted((len(chosen.strip()), len(rejected.strip())))
        if long / short > LENGTH_RATIO_LIMIT:
            flag("length_ratio", index, chosen)
        if is_canned_greeting(chosen):
            flag("canned_chosen", index, chosen)
        if sales[index]:  # asked-for shopping advice is exempt inside are_sales_talk
            flag("sales_chosen", index, chosen)

    total = max(len(dpo_rows), 1)
    messages = {
        "empty_answer": ("error", "chosen or rejected answer is empty"),
        "chosen_equals_rejected": ("error", "chosen and rejected are the same text (no preference signal)"),
        "duplicate": ("warning", "exact duplicate pairs over-weight one example"),
        "truncated_chosen": ("warning", "chosen answer looks cut off (teaches the model to stop mid-sentence)"),
        "truncated_rejected": ("warning", "rejected answer looks cut off (may teach a length preference)"),
        "length_ratio": ("warning", f"one answer is over {LENGTH_RATIO_LIMIT:g}x longer than the other (length bias)"),
        "canned_chosen": ("pattern", "chosen answer is a canned greeting (teaches collapse)"),
        "sales_chosen": ("pattern", "chosen answer contains sales talk (teaches pitching)"),
    }
    issues = []
    for code, (severity, message) in messages.items():
        indices = found.get(code)
        if not indices:
            continue
        if severity == "pattern":
            share = len(indices) / total
            severity = "error" if share >= PATTERN_ERROR_SHARE else "warning"
            message = f"{message}: {share:.0%} of pairs"
        issues.append(LintIssue(severity, code, message, tuple(indices[:20]), len(indices), samples[code]))
    issues.sort(key=lambda i: i.severity != "error")  # errors first, stable otherwise
    return LintReport(len(dpo_rows), tuple(issues))


# ---- agreement and position bias ----------------------------------------------


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Two raters' labels on the same items; None when chance agreement is total (0/0)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(x == y for x, y in pairs) / n
    first, second = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def krippendorff_alpha_nominal(units: list[list[str]]) -> float | None:
    """Alpha over units rated by any number of raters (missing ratings allowed)."""
    coincidences: Counter = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue  # a single rating cannot agree or disagree with anything
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincidences[values[i], values[j]] += 1 / (m - 1)
    totals: Counter = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    observed = sum(w for (c, k), w in coincidences.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or expected == 0:
        return None
    return 1 - (n - 1) * observed / expected


def agreement(rows: list[dict]) -> dict:
    """Inter-annotator agreement on comparisons labeled by more than one annotator."""
    by_comparison: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        by_comparison[row["comparison_id"]][row["annotator"]] = row["choice"]
    shared = {cid: votes for cid, votes in by_comparison.items() if len(votes) > 1}
    annotators = sorted({a for votes in shared.values() for a in votes})
    kappas = []
    for x, y in combinations(annotators, 2):
        pairs = [(votes[x], votes[y]) for votes in shared.values() if x in votes and y in votes]
        if pairs:
            kappas.append({"annotators": [x, y], "n": len(pairs), "kappa": cohen_kappa(pairs)})
    return {"comparisons": len(shared), "cohen_kappa": kappas,
            "krippendorff_alpha": krippendorff_alpha_nominal([list(v.values()) for v in shared.values()])}


def position_bias(rows: list[dict]) -> dict:
    """Share of decisive votes won by the LEFT answer; 0.5 means no position bias."""
    decisive = [row["choice"] for row in rows if row["choice"] in ("a", "b")]
    left = decisive.count("a")
    return {"decisive": len(decisive), "left_wins": left, "left_share": left / len(decisive) if decisive else None}
