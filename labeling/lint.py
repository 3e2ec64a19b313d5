"""The data lint: DPO pairs in, a LintReport out; what it flags is what a round leaves out.

Run on the pairs a round would train on, before it starts: garbage in the data
is what teaches collapse, pitching and stopping mid-sentence. The lint filters,
it does not stall: every row with an error (empty, canned, sales talk) is left
out of the round's snapshot, and so are answers cut off by the token limit,
unless an admin includes them on purpose (labeling/pairs.py, training_rows).
Warnings are shown and kept. The canned-reply and sales-talk verdicts come from
evals.checks, so the data and the checkpoint are judged by one definition; a
prompt that asks for a pitch (shopping advice, an ad, a blog post, a cover
letter) licenses the pitch in its answer there too.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field

from evals.checks import are_sales_talk, is_canned_greeting, names_its_model

LENGTH_RATIO_LIMIT = 8.0
TRUNCATION_MIN_WORDS = 20  # short answers ("Paris") legitimately skip final punctuation
SENTENCE_END = tuple('.!?…"\'”’)]}>*`') + ("。", "！", "？")
LIST_OR_TABLE_LINE = re.compile(r"^\s*([-*+|•]|\d+[.)])")

# code -> (severity, reason). An "error" row is left out of a round unless include_flagged;
# a cut-off row (CUT_OFF) unless include_cut_off; a "warning" is shown and kept. Canned and
# sales answers are errors even when there is only one: leaving one pair out costs nothing,
# while the pattern it starts is what teaches collapse or pitching.
RULES = {
    "empty_answer": ("error", "chosen or rejected answer is empty"),
    "chosen_equals_rejected": ("error", "chosen and rejected are the same text (no preference signal)"),
    "canned_chosen": ("error", "chosen answer is a canned greeting (teaches collapse)"),
    "sales_chosen": ("error", "chosen answer contains sales talk the prompt did not ask for (teaches pitching)"),
    "truncated_chosen": ("warning", "chosen answer was cut off by the token limit or looks cut off (teaches "
                                    "the model to stop mid-sentence); left out unless cut-off answers are included"),
    "truncated_rejected": ("warning", "rejected answer was cut off by the token limit or looks cut off "
                                      "(may teach a length preference); left out of DPO unless cut-off answers "
                                      "are included"),
    "duplicate": ("warning", "exact duplicate pairs over-weight one example"),
    "length_ratio": ("warning", f"one answer is over {LENGTH_RATIO_LIMIT:g}x longer than the other (length bias)"),
    "names_model": ("warning", "an answer names its model or maker (\"As SmolLM, I…\"), so the vote may not have "
                               "been blind; a reviewer can exclude it"),
}
CUT_OFF = ("truncated_chosen", "truncated_rejected")
EXAMPLES_KEPT = 20  # row indices per issue in `examples` (`rows` keeps every flagged row)


@dataclass(frozen=True)
class LintIssue:
    severity: str  # "error": the row is left out of a round by default; "warning": shown, kept
    code: str
    message: str
    examples: tuple[int, ...]  # row indices, capped
    count: int = 0
    sample: str = ""  # an excerpt of the first offending text, for the UI
    # every flagged row: {"index", "comparison_id" (None when unknown), "prompt", "answer"}, full texts
    rows: tuple[dict, ...] = ()


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
                            "examples": list(i.examples), "sample": i.sample,
                            "comparison_ids": list(dict.fromkeys(r["comparison_id"] for r in i.rows
                                                                 if r["comparison_id"] is not None))}
                           for i in self.issues]}

    def to_frame_rows(self) -> list[dict]:
        """One dict per flagged row, errors first: severity, code, reason, prompt, answer, comparison_id.

        Texts are whole; the UI shortens them (and lets the reader expand them)."""
        return [{"severity": i.severity, "code": i.code, "reason": RULES.get(i.code, ("", i.message))[1],
                 "prompt": row["prompt"], "answer": row["answer"], "comparison_id": row["comparison_id"]}
                for i in self.issues for row in i.rows]

    def summary(self) -> str:
        verdict = "ok" if self.ok else "NOT ok"
        return (f"lint {verdict}: {counted(self.rows, 'row')}, {counted(len(self.errors), 'error')}, "
                f"{counted(len(self.warnings), 'warning')}")

    def to_markdown(self) -> str:
        lines = [f"**Data lint: {counted(len(self.errors), 'error')}, {counted(len(self.warnings), 'warning')}** "
                 f"({counted(self.rows, 'pair')})"]
        if not self.issues:
            return lines[0] + "\n\nNo issues found."
        lines += ["", "| severity | check | rows | message | examples |", "|---|---|---|---|---|"]
        for i in self.issues:
            message = i.message.replace("|", "\\|").replace("\n", " ")
            examples = ", ".join(map(str, i.examples[:5]))
            lines.append(f"| {i.severity} | `{i.code}` | {i.count} | {message} | {examples} |")
        return "\n".join(lines)


def counted(n: int, noun: str) -> str:
    """'1 pair', '2 pairs': a team's first lint runs on a handful of votes."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


COMPARISONS_LISTED = 10  # full ids per issue in the CLI, the rest counted


def comparison_list(issue: LintIssue, limit: int = COMPARISONS_LISTED) -> str:
    """The comparisons behind an issue, whole ids (what a reviewer pastes to exclude one), the rest counted."""
    ids = list(dict.fromkeys(str(r["comparison_id"]) for r in issue.rows if r["comparison_id"] is not None))
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return (", ".join(ids[:limit]) + more) or "unknown (rows given without comparison ids)"


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


def is_cut_off(text: str, recorded: bool = False) -> bool:
    """An answer a round should not learn from as it stands: the Arena recorded it as cut by the token
    limit and not trimmed back to a complete sentence (`recorded`), or it looks cut off."""
    return bool(recorded) or looks_truncated(text)


def _text(messages) -> str:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content") or "")
    return ""


def lint(dpo_rows: list[dict], comparison_ids: list[str | None] | None = None,
         cut_off: list[tuple[bool, bool]] | None = None) -> LintReport:
    """Lint DPO pairs. `comparison_ids` names each row's comparison (for the UI and the exclusions);
    `cut_off` is the Arena's record per row, (chosen cut and not trimmed, rejected cut and not trimmed)."""
    ids = list(comparison_ids) if comparison_ids is not None else [None] * len(dpo_rows)
    cuts = list(cut_off) if cut_off is not None else [(False, False)] * len(dpo_rows)
    if len(ids) != len(dpo_rows) or len(cuts) != len(dpo_rows):
        raise ValueError(f"{len(dpo_rows)} rows but {len(ids)} comparison ids and {len(cuts)} cut-off records")
    found: dict[str, list[dict]] = defaultdict(list)

    def flag(code: str, index: int, text: str) -> None:
        found[code].append({"index": index, "comparison_id": ids[index],
                            "prompt": _text(dpo_rows[index].get("prompt")), "answer": text})

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
        for side, text, recorded in (("chosen", chosen, cuts[index][0]), ("rejected", rejected, cuts[index][1])):
            if is_cut_off(text, recorded):
                flag(f"truncated_{side}", index, text)
        short, long = sorted((len(chosen.strip()), len(rejected.strip())))
        if long / short > LENGTH_RATIO_LIMIT:
            flag("length_ratio", index, chosen)
        if is_canned_greeting(chosen):
            flag("canned_chosen", index, chosen)
        if sales[index]:  # asked-for shopping advice and persuasive writing are exempt inside are_sales_talk
            flag("sales_chosen", index, chosen)
        named = next((text for text in (chosen, rejected) if names_its_model(text)), None)
        if named is not None:
            flag("names_model", index, named)

    total = max(len(dpo_rows), 1)
    issues = []
    for code, (severity, message) in RULES.items():
        flagged = found.get(code)
        if not flagged:
            continue
        if code in ("canned_chosen", "sales_chosen"):
            message = f"{message}: {len(flagged) / total:.0%} of pairs"
        issues.append(LintIssue(severity, code, message, tuple(r["index"] for r in flagged[:EXAMPLES_KEPT]),
                                len(flagged), " ".join(flagged[0]["answer"].split())[:80], tuple(flagged)))
    issues.sort(key=lambda i: i.severity != "error")  # errors first, stable otherwise
    return LintReport(len(dpo_rows), tuple(issues))
