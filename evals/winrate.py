"""Human votes -> per-pair win rates and a Bradley-Terry leaderboard with bootstrap CIs.

A vote is a mapping with `model_a`, `model_b` and `choice` in a|b|tie|both_bad.
Ties and both_bad count half a win to each side (both_bad is a tie between two
bad answers, as in Chatbot Arena). Ratings are on the Elo scale (400 points =
10:1 odds, mean 1000) so reviewers can read them like arena scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

CHOICES = ("a", "b", "tie", "both_bad")
SCALE, CENTER = 400.0, 1000.0
PRIOR_TIES = 0.5  # a virtual half tie per compared pair keeps a model with no wins finite


def _clean(votes: Iterable[Mapping]) -> list[tuple[str, str, str]]:
    rows = []
    for vote in votes:
        a, b, choice = str(vote["model_a"]), str(vote["model_b"]), str(vote["choice"])
        if choice not in CHOICES:
            raise ValueError(f"unknown vote choice {choice!r}; expected one of {', '.join(CHOICES)}")
        if a != b:  # a model against itself says nothing about ranking
            rows.append((a, b, choice))
    return rows


def _score(choice: str) -> float:
    """Points for model_a."""
    return {"a": 1.0, "b": 0.0}.get(choice, 0.5)


def pairwise(votes: Iterable[Mapping]) -> list[dict]:
    """One row per pair of models (names sorted): counts and model_a's win rate (ties half)."""
    pairs: dict[tuple[str, str], dict] = {}
    for a, b, choice in _clean(votes):
        key = tuple(sorted((a, b)))
        row = pairs.setdefault(key, {"model_a": key[0], "model_b": key[1], "n_votes": 0,
                                     "a_wins": 0, "b_wins": 0, "ties": 0, "both_bad": 0, "_points": 0.0})
        flipped = a != key[0]
        row["n_votes"] += 1
        if choice in ("tie", "both_bad"):
            row["ties" if choice == "tie" else "both_bad"] += 1
        else:
            row["a_wins" if (choice == "a") != flipped else "b_wins"] += 1
        row["_points"] += 1 - _score(choice) if flipped else _score(choice)
    out = []
    for row in pairs.values():
        row["a_win_rate"] = round(row.pop("_points") / row["n_votes"], 4)
        out.append(row)
    return sorted(out, key=lambda r: (r["model_a"], r["model_b"]))


def _fit(index: np.ndarray, points: np.ndarray, n_models: int, iters: int = 500) -> np.ndarray:
    """Bradley-Terry strengths by Hunter's MM algorithm; returns log-strengths, mean 0.

    index: (n, 2) model indices of each vote; points: model_a's score (1, 0.5 or 0).
    """
    wins = np.zeros((n_models, n_models))
    np.add.at(wins, (index[:, 0], index[:, 1]), points)
    np.add.at(wins, (index[:, 1], index[:, 0]), 1 - points)
    games = wins + wins.T
    compared = games > 0
    wins = wins + PRIOR_TIES / 2 * compared
    games = games + PRIOR_TIES * compared
    total_wins = wins.sum(axis=1)
    active = games.sum(axis=1) > 0  # a model missing from a bootstrap sample gets NaN
    strength = np.ones(n_models)
    for _ in range(iters):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = np.where(active, total_wins / np.where(active, denom, 1), 1.0)
        new /= np.exp(np.mean(np.log(new[active])))
        if np.max(np.abs(new - strength)) < 1e-9:
            strength = new
            break
        strength = new
    log_strength = np.log(strength)
    return np.where(active, log_strength - log_strength[active].mean(), np.nan)


def _to_rating(log_strength: np.ndarray) -> np.ndarray:
    return CENTER + SCALE * log_strength / np.log(10)


def leaderboard(votes: Iterable[Mapping], n_bootstrap: int = 200, seed: int = 0) -> list[dict]:
    """Models by Bradley-Terry rating, with 95% bootstrap intervals (votes resampled, seeded)."""
    rows = _clean(votes)
    if not rows:
        return []
    models = sorted({m for a, b, _ in rows for m in (a, b)})
    position = {m: i for i, m in enumerate(models)}
    index = np.array([[position[a], position[b]] for a, b, _ in rows])
    points = np.array([_score(c) for _, _, c in rows])
    ratings = _to_rating(_fit(index, points, len(models)))

    rng = np.random.default_rng(seed)
    samples = np.empty((n_bootstrap, len(models)))
    for k in range(n_bootstrap):
        pick = rng.integers(0, len(rows), len(rows))
        samples[k] = _to_rating(_fit(index[pick], points[pick], len(models), iters=200))
    low, high = (np.nanpercentile(samples, [2.5, 97.5], axis=0) if n_bootstrap else (ratings, ratings))

    n_votes = np.bincount(index.ravel(), minlength=len(models))
    scored = np.zeros(len(models))
    np.add.at(scored, index[:, 0], points)
    np.add.at(scored, index[:, 1], 1 - points)
    board = [
        {
            "model": m,
            "rating": round(float(ratings[i]), 1),
            "ci_low": round(float(min(low[i], ratings[i])), 1),
            "ci_high": round(float(max(high[i], ratings[i])), 1),
            "n_votes": int(n_votes[i]),
            "win_rate": round(float(scored[i] / n_votes[i]), 4),
        }
        for i, m in enumerate(models)
    ]
    return sorted(board, key=lambda r: -r["rating"])
