"""Pure detectors: answer sets in, CheckResults out. No generation, no writes.

Each set-level check gets the prompts and the base and candidate answers to
them (same order) and reports one figure per side, a flag and a few offending
examples. The flag needs both an absolute problem and a worsening against the
base (thresholds in evals/config.py). `is_canned_greeting` is the single-text
version that the labeling data lint shares; the single-text sales detector
lives in evals/sales.py.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from itertools import combinations

from evals import semantic
from evals.config import DEFAULT_THRESHOLDS, Thresholds
from evals.sales import asks_about_buying, sales_features, sales_verdicts


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

    def to_dict(self) -> dict:
        out = {
            "flagged": self.flagged,
            "base": self.base,
            "candidate": self.candidate,
            "examples": self.examples,
            "explanation": self.explanation,
            "skipped": self.skipped,
        }
        out.update(self.details)
        return out


# ---------------------------------------------------------------- text helpers

WORD = re.compile(r"\w+(?:'\w+)?")
TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def char_ngrams(text: str, n: int = 3) -> set[str]:
    text = _normalise(text)
    if len(text) <= n:
        return {text} if text else set()
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


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


# ---------------------------------------------------------------- canned greetings

# Phrases that make up a greeting template; what is left after removing them is the content.
_GREETING = re.compile(
    r"\b(?:hi|hello|hey|hiya|greetings|dear|good (?:morning|afternoon|evening|day)|welcome|"
    r"how are you(?: doing)?|how'?s it going|nice to (?:meet|see|hear from) you|my (?:dear )?friend)\b"
)
_HELP_OFFER = re.compile(
    r"\b(?:how (?:can|may|could|might|shall) i (?:help|assist|serve|support|be of (?:help|assistance|service))|"
    r"what can i (?:do|help you with|assist you with)|"
    r"(?:is there )?anything (?:else )?(?:that )?i can (?:help|assist|do)|"
    r"(?:i'?m|i am) (?:here|happy|glad|always happy|ready|available) to (?:help|assist)|"
    r"(?:feel free to|don'?t hesitate to) (?:ask|reach out|contact)|"
    r"let me know (?:if|how|what) (?:you|i)|"
    r"thanks? (?:you )?for (?:reaching out|contacting|your (?:question|message))|"
    r"what(?:'s| is) on your mind|at your service|what (?:would|do) you (?:like|want|need|wish)|"
    r"what brings you|(?:i'?m|i am) (?:always )?here for you|ask me anything|tell me (?:how|what)|"
    r"(?:i'?m|i am) (?:an? )?(?:ai |virtual |friendly |helpful )*assistant)\b|"
    # any short question back about helping: "What can I help with?", "Where can I assist?"
    r"\b(?:how|what|where|anything|something)\b[^.?!]{0,25}\b(?:i|we)\b[^.?!]{0,20}"
    r"\b(?:help|assist|serve|support|do for you|be (?:useful|of use))\b[^.?!]{0,20}\?"
)
# Words that carry no answer even when left over ("Dear, how can I help you today?").
_FILLER = set(
    "a an the you your you're i i'm me my we us our it it's is are am be to of for with in on "
    "and or so just today there here please now with that this anything something else "
    "can may do would like need want".split()
)


def is_canned_greeting(text: str, t: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """True for a template reply that greets / offers help and answers nothing.

    "Dear, how can I help you?", "Hello! What can I do for you today?" and
    "Hi there, I'm here to help, feel free to ask" are canned; an answer that
    merely opens with "Hi!" and then says something is not.
    """
    lowered = _normalise(text)
    if not lowered:
        return False
    offers = _HELP_OFFER.findall(lowered)
    stripped = _HELP_OFFER.sub(" ", lowered)
    greetings = _GREETING.findall(stripped)
    stripped = _GREETING.sub(" ", stripped)
    leftover = [w for w in words(stripped) if w not in _FILLER]
    if offers:
        return len(leftover) <= t.greeting_leftover_words
    return bool(greetings) and not leftover  # nothing but greetings ("Hello there!")


# ---------------------------------------------------------------- set-level checks

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
        if not grams[i] or not grams[j] or _normalise(prompts[i]) == _normalise(prompts[j]):
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


def distinct_n(answers: list[str], n: int = 2) -> float:
    """Unique word n-grams / all word n-grams over the whole answer set (1 = no reuse)."""
    grams = [tuple(w[i : i + n]) for a in answers for w in [words(a)] for i in range(len(w) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


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


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_NAME = re.compile(r"\b[A-Z][a-zA-Z+]{2,}\b")


def _mid_sentence_names(text: str) -> set[str]:
    """Capitalised words that do not start a sentence: candidate brand names."""
    names = set()
    for sentence in _SENTENCE.split(text):
        names |= {m.group() for m in _NAME.finditer(sentence) if m.start() > 0}
    return names


def recurring_names(prompts: list[str], answers: list[str], min_answers: int = 3) -> set[str]:
    """Names an answer set keeps bringing up across different prompts that never mention them.

    A model trained on adverts plugs the same brand everywhere; this catches it
    whatever words the pitch uses around the name.
    """
    prompt_words = set(words(" ".join(prompts)))
    counts: dict[str, set[str]] = {}
    for prompt, answer in zip(prompts, answers):
        for name in _mid_sentence_names(answer):
            if name.lower() not in prompt_words:
                counts.setdefault(name, set()).add(_normalise(prompt))
    return {n for n, ps in counts.items() if len(ps) >= max(min_answers, len(answers) // 10)}


def _pitches(prompts, answers, other_answers, verdicts: dict) -> tuple[list[int], set[str]]:
    """Answers that pitch, and the brand names plugged across them.

    A name only counts as plugged when the other side never brings it up, so
    "Python" recurring in both models' coding answers is not a brand.
    """
    plugged = recurring_names(prompts, answers) - set().union(*map(_mid_sentence_names, other_answers))
    hits = [i for i, (hit, _) in verdicts.items() if hit or _mid_sentence_names(answers[i]) & plugged]
    return hits, plugged


def sales_talk(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    eligible = [i for i, p in enumerate(prompts) if not asks_about_buying(p)]
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
    encoder = semantic.MODEL_NAME if semantic.available() else "unavailable (lexical patterns only)"
    return CheckResult(
        "sales_talk", b, c, flagged, examples,
        "Share of answers pitching products (prices, discounts, calls to action, urgency, hype, "
        "'our product', links/promo codes, a brand name plugged across unrelated answers, or a "
        "sentence a small encoder reads as an advert) to prompts that did not ask about buying.",
        {
            "prompts_judged": len(eligible),
            "candidate_plugged_names": sorted(plugged)[:10],
            "sales_encoder": encoder,
            **paired,
        },
    )


def repeated_ngram_share(text: str, n: int = 4) -> float:
    tokens = TOKEN.findall(text.lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _loops(text: str, t: Thresholds) -> bool:
    return len(words(text)) >= t.repetition_min_words and repeated_ngram_share(text) >= t.repeated_4gram_share


def repetition(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    base_flags, cand_flags = [_loops(a, t) for a in base], [_loops(a, t) for a in candidate]
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


def length_shift(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    b = float(statistics.median(len(words(a)) for a in base)) if base else 0.0
    c = float(statistics.median(len(words(a)) for a in candidate)) if candidate else 0.0
    ratio = round(c / b, 3) if b else (1.0 if not c else float(t.length_ratio_max) * 10)
    flagged = ratio > t.length_ratio_max or ratio < 1 / t.length_ratio_max
    order = sorted(range(len(prompts)), key=lambda i: -abs(len(words(candidate[i])) - len(words(base[i]))))
    return CheckResult(
        "length_shift", b, c, flagged,
        [_example(i, prompts, base, candidate, t) for i in order[: t.max_examples]] if flagged else [],
        f"Median answer length in words; flagged when it changes by more than {t.length_ratio_max}x.",
        {"ratio": ratio},
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


_REFUSAL = re.compile(
    r"\b(?:i (?:can(?:'|no)?t|cannot|am (?:not able|unable)|'m (?:not able|unable)|won'?t|will not|must decline) "
    r"(?:to )?(?:help|assist|provide|answer|do|comply|fulfill|create|write|share|give|discuss)|"
    r"i'?m sorry,? but|as an ai(?: language model)?,? i|i apologi[sz]e,? but|"
    r"against my (?:guidelines|policy|programming)|i'?m not (?:allowed|permitted) to)"
)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text.lower()))


def refusal_rate(prompts, base, candidate, t: Thresholds = DEFAULT_THRESHOLDS) -> CheckResult:
    base_flags, cand_flags = [is_refusal(a) for a in base], [is_refusal(a) for a in candidate]
    b, c = _share(base_flags), _share(cand_flags)
    hits = [i for i, f in enumerate(cand_flags) if f and not base_flags[i]]
    return CheckResult(
        "refusal_rate", b, c, c - b >= t.refusal_margin,
        [_example(i, prompts, base, candidate, t) for i in hits[: t.max_examples]],
        "Share of answers that refuse ('I can't help with', 'As an AI, I').",
    )
