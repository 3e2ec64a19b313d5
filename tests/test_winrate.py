"""Win rates and Bradley-Terry ratings from human votes."""

from __future__ import annotations

import random

import pytest

from evals.winrate import leaderboard, pairwise


def votes(a, b, choice, n):
    return [{"model_a": a, "model_b": b, "choice": choice} for _ in range(n)]


def simulated(strengths, n=600, seed=1):
    """Votes drawn from a known Bradley-Terry model (Elo scale)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(list(strengths), 2)
        p_a = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
        out.append({"model_a": a, "model_b": b, "choice": "a" if rng.random() < p_a else "b"})
    return out


def test_pairwise_counts_orients_and_halves_ties():
    rows = votes("base", "round-1", "b", 3) + votes("round-1", "base", "a", 1) + votes("base", "round-1", "tie", 2) \
        + votes("round-1", "base", "both_bad", 2)
    [pair] = pairwise(rows)
    assert (pair["model_a"], pair["model_b"]) == ("base", "round-1")
    assert pair["n_votes"] == 8 and pair["b_wins"] == 4 and pair["a_wins"] == 0
    assert pair["ties"] == 2 and pair["both_bad"] == 2
    assert pair["a_win_rate"] == pytest.approx(2 / 8)  # four half-wins


def test_leaderboard_recovers_known_order_and_gaps():
    truth = {"strong": 1200, "middle": 1000, "weak": 900}
    board = leaderboard(simulated(truth))
    assert [r["model"] for r in board] == ["strong", "middle", "weak"]
    ratings = {r["model"]: r["rating"] for r in board}
    assert ratings["strong"] - ratings["middle"] == pytest.approx(200, abs=50)
    assert ratings["middle"] - ratings["weak"] == pytest.approx(100, abs=50)
    for row in board:
        assert row["ci_low"] <= row["rating"] <= row["ci_high"]
        assert row["n_votes"] > 300 and 0 < row["win_rate"] < 1


def test_ties_count_half_and_even_record_means_equal_ratings():
    board = leaderboard(votes("x", "y", "a", 5) + votes("x", "y", "b", 5) + votes("x", "y", "tie", 4))
    assert board[0]["rating"] == pytest.approx(board[1]["rating"], abs=0.5)
    assert board[0]["win_rate"] == 0.5


def test_bootstrap_is_seeded_and_narrows_with_more_votes():
    few, many = simulated({"a": 1100, "b": 1000}, n=40), simulated({"a": 1100, "b": 1000}, n=800)
    assert leaderboard(few, seed=3) == leaderboard(few, seed=3)
    width = lambda board: board[0]["ci_high"] - board[0]["ci_low"]  # noqa: E731
    assert width(leaderboard(many)) < width(leaderboard(few))


def test_unbeaten_model_stays_finite_and_edge_cases():
    board = leaderboard(votes("x", "y", "a", 3))
    assert board[0]["model"] == "x" and board[0]["rating"] < 2000 and board[1]["rating"] > 0
    assert leaderboard([]) == [] and pairwise([]) == []
    assert leaderboard(votes("x", "x", "a", 3)) == []  # self-comparisons are ignored
    with pytest.raises(ValueError, match="choice"):
        leaderboard(votes("x", "y", "maybe", 1))


def test_model_missing_from_some_resamples_keeps_a_valid_interval():
    rows = simulated({"a": 1100, "b": 1000, "c": 1000}, n=200) + votes("a", "rare", "a", 1)
    rare = next(r for r in leaderboard(rows) if r["model"] == "rare")
    assert rare["n_votes"] == 1 and rare["ci_low"] <= rare["rating"] <= rare["ci_high"]
