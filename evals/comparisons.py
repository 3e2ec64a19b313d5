"""Candidate vs base over one prompt set: each check gets the prompts and both sides' answers.

Each check reports one figure per side, a flag and a few offending examples.
The flag needs both an absolute problem and a worsening against the base
(thresholds in evals/config.py); the per-prompt share checks also need the
candidate to be worse on more prompts than chance explains. The single-text
detectors they count with live in evals/checks.py, shared with the data lint.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import combinations

from evals import semantic
from evals.checks import (
    char_ngrams, distinct_n, is_canned_greeting, is_refusal, jaccard, licenses_sales_talk, loops, mid_sentence_names,
    normalise, recurring_names, repeated_ngram_share, sales_features, words,
)
from evals.config import DEFAULT_THRESHOLDS, LENGTH_SHIFT_HARMS, Thresholds
from evals.sales import sales_verdicts


@dataclass
class CheckResult:
    name: str
    base: float | None
    candidate: float | None
    flagged: bool
    examples: list[dict]
    explanation: str
    details: dict = field(default_factory=dict)  # extra figures shown beside base/candidate
    skipped: bool = False
    warning: bool = False  # worth showing, not failing the gate (length_shift without a quality drop)

    def to_dict(self) -> dict:
        out = {
            "flagged": self.flagged,
            "warning": self.warning,
            "base": self.base,
            "candidate": self.candidate,
            "examples": self.examples,
            "explanation": self.explanation,
            "skipped": self.skipped,
        }
        out.update(self.details)
        return out



# ---------------------------------------------------------------- shared helpers

def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _example(i: int, prompts, base, candidate, t: Thresholds, **extra) -> dict:
    return {
        "prompt": _clip(prompts[i], t.example_chars),
        "base": _clip(base[i], t.example_chars),
        "candidate": _clip(candidate[i], t.example_chars),
        **extra,
    }


def _share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _discordant(base_flags: list[bool], cand_flags: list[bool]) -> tuple[int, int]:
    """(prompts only the candidate is flagged on, prompts only the base is flagged on)."""
    worse = sum(c and not b for b, c in zip(base_flags, cand_flags))
    better = sum(b and not c for b, c in zip(base_flags, cand_flags))
    return worse, better


def paired_p_value(base_flags: list[bool], cand_flags: list[bool]) -> float:
    """One-sided exact McNemar (sign) test: how likely is the candidate's excess of flagged answers
    by chance, given the prompts where the two sides disagree? 1.0 when it has no excess."""
    worse, better = _discordant(base_flags, cand_flags)
    n = worse + better
    if worse <= better:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n


def _worse_by_chance_test(base_flags, cand_flags, share_max: float, margin: float, t: Thresholds) -> tuple[bool, dict]:
    """A per-prompt share check's flag: bad in absolute terms, worse than base by the margin, and
    worse on more prompts than chance explains (so detector noise on a weak base does not gate)."""
    b, c = _share(base_flags), _share(cand_flags)
    p = paired_p_value(base_flags, cand_flags)
    flagged = c >= share_max and c - b >= margin and p <= t.paired_p_value_max
    worse, better = _discordant(base_flags, cand_flags)
    details = {"newly_flagged": worse, "no_longer_flagged": better,
               "p_value": float(f"{p:.3g}")}  # 3 significant digits: tiny p-values stay visible
    return flagged, details


# ---------------------------------------------------------------- the checks

def _near_duplicate_cluster(prompts: list[str], answers: list[str], t: Thresholds) -> list[int]:
    """Indices of the largest group of near-identical answers to *different* prompts."""
    grams = [char_ngrams(a) for a in answers]
    parent = list(range(len(answers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in combinations(range(len(answers)), 2):
        if not grams[i] or not grams[j] or normalise(prompts[i]) == normalise(prompts[j]):
            continue
        if jaccard(grams[i], grams[j]) >= t.near_duplicate_jaccard:
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(answers)):
        groups.setdefault(find(i), []).append(i)
    largest = max(groups.values(), key=len, default=[])
    return largest if len(largest) >= 2 else []


def _mean_pairwise_similarity(answers: list[str]) -> float:
    grams = [char_ngrams(a) for a in answers if a.strip()]
    pairs = list(combinations(grams, 2))
    return round(sum(jaccard(a, b) for a, b in pairs) / len(pairs), 4) if pairs else 0.0


def _canned_indices(prompts, answers, t: Thresholds) -> list[int]:
    cluster = set(_near_duplicate_cluster(prompts, answers, t))
    return sorted(cluster | {i for i, a in enumerate(answers) if is_canned_greeting(a, t)})


def canned_reply(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    n = len(prompts)
    base_idx, cand_idx = _canned_indices(prompts, base, t), _canned_indices(prompts, candidate, t)
    b, c = round(len(base_idx) / n, 4) if n else 0.0, round(len(cand_idx) / n, 4) if n else 0.0
    flagged = c >= t.canned_share_max and c - b >= t.canned_share_margin
    new = [i for i in cand_idx if i not in set(base_idx)] or cand_idx
    return CheckResult(
        "canned_reply", b, c, flagged,
        [_example(i, prompts, base, candidate, t) for i in new[: t.max_examples]],
        "Share of answers that are a greeting template or belong to the largest group of "
        "near-identical answers to different prompts (character 3-gram Jaccard).",
        {
            "base_greeting_share": _share([is_canned_greeting(a, t) for a in base]),
            "candidate_greeting_share": _share([is_canned_greeting(a, t) for a in candidate]),
            "base_mean_similarity": _mean_pairwise_similarity(base),
            "candidate_mean_similarity": _mean_pairwise_similarity(candidate),
            "base_distinct_2": distinct_n(base),
            "candidate_distinct_2": distinct_n(candidate),
        },
    )


def _pitches(prompts, answers, other_answers, verdicts: dict) -> tuple[list[int], set[str]]:
    """Answers that pitch, and the brand names plugged across them.

    A name only counts as plugged when the other side never brings it up, so
    "Python" recurring in both models' coding answers is not a brand.
    """
    plugged = recurring_names(prompts, answers) - set().union(*map(mid_sentence_names, other_answers))
    hits = [i for i, (hit, _) in verdicts.items() if hit or mid_sentence_names(answers[i]) & plugged]
    return hits, plugged


def sales_talk(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    # prompts that ask about buying or ask for persuasive writing (a blog post, an ad) are not judged
    eligible = [i for i, p in enumerate(prompts) if not licenses_sales_talk(p)]
    both = sales_verdicts([base[i] for i in eligible] + [candidate[i] for i in eligible],
                           [""] * (2 * len(eligible)), t)  # one encoder batch for both sides
    base_verdicts, cand_verdicts = dict(zip(eligible, both)), dict(zip(eligible, both[len(eligible):]))
    base_hits, _ = _pitches(prompts, base, candidate, base_verdicts)
    cand_hits, plugged = _pitches(prompts, candidate, base, cand_verdicts)
    base_set, cand_set = set(base_hits), set(cand_hits)
    base_flags, cand_flags = [i in base_set for i in eligible], [i in cand_set for i in eligible]
    b, c = _share(base_flags), _share(cand_flags)
    flagged, paired = _worse_by_chance_test(base_flags, cand_flags, t.sales_share_max, t.sales_share_margin, t)
    new = [i for i in cand_hits if i not in base_set] or cand_hits
    examples = []
    for i in new[: t.max_examples]:
        p = cand_verdicts[i][1]
        semantic_hit = p is not None and p >= t.sales_semantic_min
        examples.append(_example(i, prompts, base, candidate, t,
                                 features=sorted(sales_features(candidate[i])) + ["semantic"] * semantic_hit,
                                 **({"semantic_probability": round(p, 3)} if p is not None else {})))
    encoder = {True: semantic.MODEL_NAME, False: "unavailable (lexical patterns only)",
               None: "not needed (the lexical patterns decided every answer)"}[semantic.encoder_status()]
    return CheckResult(
        "sales_talk", b, c, flagged, examples,
        "Share of answers pitching products (prices, discounts, calls to action, urgency, hype, "
        "'our product', links/promo codes, a brand name plugged across unrelated answers, or a "
        "sentence a small encoder reads as an advert) to prompts that neither asked about buying nor asked "
        "for persuasive writing (ads, blog posts, cover letters, pitches).",
        {
            "prompts_judged": len(eligible),
            "candidate_plugged_names": sorted(plugged)[:10],
            "sales_encoder": encoder,
            **paired,
        },
    )


def repetition(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    base_flags, cand_flags = [loops(a, t) for a in base], [loops(a, t) for a in candidate]
    b, c = _share(base_flags), _share(cand_flags)
    flagged, paired = _worse_by_chance_test(base_flags, cand_flags, t.looping_share_max, t.looping_share_margin, t)
    hits = sorted((i for i, f in enumerate(cand_flags) if f), key=lambda i: -repeated_ngram_share(candidate[i]))
    return CheckResult(
        "repetition", b, c, flagged,
        [_example(i, prompts, base, candidate, t, repeated_4grams=round(repeated_ngram_share(candidate[i]), 3))
         for i in hits[: t.max_examples]],
        "Share of answers that loop: at least "
        f"{t.repeated_4gram_share:.0%} of their 4-grams are repeats.",
        {
            "base_mean_repeated_4grams": round(statistics.fmean(map(repeated_ngram_share, base)), 4) if base else 0.0,
            "candidate_mean_repeated_4grams": (
                round(statistics.fmean(map(repeated_ngram_share, candidate)), 4) if candidate else 0.0
            ),
            **paired,
        },
    )


def rouge_l(prompts, base, candidate, references=None, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    explanation = "Mean ROUGE-L F1 against reference answers (only prompts that have one)."
    refs = list(references or [None] * len(prompts))
    idx = [i for i, r in enumerate(refs) if r and r.strip()]
    if not idx:
        return CheckResult("rouge_l", None, None, False, [], explanation + " Skipped: no references.",
                           {"n_references": 0, "note": "no references"}, skipped=True)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    b_scores = {i: scorer.score(refs[i], base[i])["rougeL"].fmeasure for i in idx}
    c_scores = {i: scorer.score(refs[i], candidate[i])["rougeL"].fmeasure for i in idx}
    b, c = round(statistics.fmean(b_scores.values()), 4), round(statistics.fmean(c_scores.values()), 4)
    worst = sorted(idx, key=lambda i: c_scores[i] - b_scores[i])
    return CheckResult(
        "rouge_l", b, c, b - c >= t.rouge_drop_margin,
        [_example(i, prompts, base, candidate, t, reference=_clip(refs[i], t.example_chars),
                  base_rouge_l=round(b_scores[i], 3), candidate_rouge_l=round(c_scores[i], 3))
         for i in worst[: t.max_examples] if c_scores[i] < b_scores[i]],
        explanation, {"n_references": len(idx)},
    )


def length_shift(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS,
                 quality_drops: list[str] | tuple[str, ...] = ()) -> CheckResult:
    """The median answer length moved past `t.length_ratio_max` either way.

    A shift alone is a warning: a concise round that answers better is not a
    regression. It flags only beside a quality drop, the names of the LENGTH_SHIFT_HARMS
    checks that flagged (`quality_drops`; build_report passes them); see evals/config.py.
    """
    b = float(statistics.median(len(words(a)) for a in base)) if base else 0.0
    c = float(statistics.median(len(words(a)) for a in candidate)) if candidate else 0.0
    ratio = round(c / b, 3) if b else (1.0 if not c else float(t.length_ratio_max) * 10)
    shifted = ratio > t.length_ratio_max or ratio < 1 / t.length_ratio_max
    harms = [name for name in LENGTH_SHIFT_HARMS if name in set(quality_drops)]
    flagged = shifted and bool(harms)
    order = sorted(range(len(prompts)), key=lambda i: -abs(len(words(candidate[i])) - len(words(base[i]))))
    verdict = ("" if not shifted else f" Flagged together with {', '.join(harms)}." if flagged else
               " A warning only: no quality check (" + ", ".join(LENGTH_SHIFT_HARMS) + ") dropped.")
    return CheckResult(
        "length_shift", b, c, flagged,
        [_example(i, prompts, base, candidate, t) for i in order[: t.max_examples]] if shifted else [],
        f"Median answer length in words; a change by more than {t.length_ratio_max}x is a warning, and fails "
        "the gate only together with a quality drop (ROUGE-L down, more empty answers, or canned replies)."
        + verdict,
        {"ratio": ratio, "shifted": shifted, "with_quality_drop": harms},
        warning=shifted and not flagged,
    )


def empty_answers(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    base_flags, cand_flags = [not words(a) for a in base], [not words(a) for a in candidate]
    b, c = _share(base_flags), _share(cand_flags)
    hits = [i for i, f in enumerate(cand_flags) if f]
    return CheckResult(
        "empty_answers", b, c, c >= t.empty_share_max and c - b >= t.empty_share_margin,
        [_example(i, prompts, base, candidate, t) for i in hits[: t.max_examples]],
        "Share of answers with no words at all.",
    )


def refusal_rate(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    base_flags, cand_flags = [is_refusal(a) for a in base], [is_refusal(a) for a in candidate]
    b, c = _share(base_flags), _share(cand_flags)
    hits = [i for i, f in enumerate(cand_flags) if f and not base_flags[i]]
    return CheckResult(
        "refusal_rate", b, c, c - b >= t.refusal_margin,
        [_example(i, prompts, base, candidate, t) for i in hits[: t.max_examples]],
        "Share of answers that refuse ('I can't help with', 'As an AI, I').",
    )
