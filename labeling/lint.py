"""The data lint: DPO pairs in, a LintReport out (errors block a round, warnings are shown).

Run on the pairs a round would train on, before it starts: garbage in the data
is what teaches collapse, pitching and stopping mid-sentence. The canned-reply
and sales-talk verdicts come from evals.checks, so the data and the checkpoint
are judged by one definition.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field

from evals.checks import are_sales_talk, is_canned_greeting

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
