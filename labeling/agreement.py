"""Agreement between annotators (Cohen's kappa, Krippendorff's alpha) and position bias.

Pure functions over `Store.labeled_rows()`: one dict per vote with its
comparison_id, annotator and choice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from math import comb


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


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (scipy is not a dependency here):
    the total probability of every outcome no more likely than k."""
    if n == 0:
        return 1.0
    probabilities = [comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probabilities if p <= probabilities[k] * (1 + 1e-9)))


BIAS_P = 0.05  # a left-side win share this unlikely under no bias is flagged


def annotator_table(rows: list[dict]) -> list[dict]:
    """Per annotator: votes, median seconds per vote, tie and both-bad shares, left-side win share with
    an exact binomial test, and Cohen's kappa against everyone who labeled the same comparisons."""
    by_comparison: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        by_comparison[row["comparison_id"]][row["annotator"]] = row["choice"]
    table = []
    for annotator in sorted({row["annotator"] for row in rows}):
        mine = [row for row in rows if row["annotator"] == annotator]
        choices = Counter(row["choice"] for row in mine)
        seconds = sorted(row["time_spent_s"] for row in mine if row.get("time_spent_s") is not None)
        decisive = choices["a"] + choices["b"]
        p_left = binomial_two_sided(choices["a"], decisive)
        pairs = [(votes[annotator], other_choice) for votes in by_comparison.values() if annotator in votes
                 for other, other_choice in votes.items() if other != annotator]
        table.append({
            "annotator": annotator, "votes": len(mine),
            "median_s": seconds[len(seconds) // 2] if seconds else None,
            "tie_share": choices["tie"] / len(mine), "both_bad_share": choices["both_bad"] / len(mine),
            "left_share": choices["a"] / decisive if decisive else None, "left_p": p_left,
            "position_bias": decisive > 0 and p_left < BIAS_P,
            "shared": len(pairs), "kappa": cohen_kappa(pairs),
        })
    return table
