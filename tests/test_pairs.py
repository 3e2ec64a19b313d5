"""Vote -> training-row rules, conflict resolution, the data lint (labeling/lint.py) and agreement formulas."""

from __future__ import annotations

import pytest

from labeling import agreement, pairs
from labeling.lint import lint, looks_truncated

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
GOOD = "The capital of France is Paris."
WORSE = "France is a country in Europe."


def vote(choice, cid="c1", annotator="ann", a=GOOD, b=WORSE, better=None, prompt=PROMPT):
    return {"comparison_id": cid, "annotator": annotator, "choice": choice, "better_answer": better,
            "messages": prompt, "answer_a": a, "answer_b": b}


def assistant(text):
    return [{"role": "assistant", "content": text}]


def dpo_row(chosen, rejected, prompt=PROMPT):
    return {"prompt": prompt, "chosen": assistant(chosen), "rejected": assistant(rejected)}


# ---- building rows ----


def test_decisive_votes_become_dpo_pairs_with_the_winner_chosen():
    rows, report = pairs.build_dpo([vote("a", "c1"), vote("b", "c2")])
    assert rows == [dpo_row(GOOD, WORSE), dpo_row(WORSE, GOOD)]
    assert report["rows"] == 2 and report["conflicts"] == []


def test_ties_and_both_bad_give_no_dpo_pairs():
    rows, _ = pairs.build_dpo([vote("tie", "c1"), vote("both_bad", "c2")])
    assert rows == []


def test_edited_answer_gives_a_pair_against_each_original_and_one_sft_row():
    edit = "Paris is the capital of France, and its largest city."
    votes = [vote("both_bad", better=f"  {edit}\n")]
    dpo, _ = pairs.build_dpo(votes)
    assert dpo == [dpo_row(edit, GOOD), dpo_row(edit, WORSE)]
    sft, _ = pairs.build_sft(votes)
    assert sft == [{"messages": PROMPT + assistant(edit)}]


def test_better_answer_equal_to_an_original_is_not_an_edit():
    dpo, _ = pairs.build_dpo([vote("a", better=GOOD + "  ")])
    assert dpo == [dpo_row(GOOD, WORSE)]


def test_edit_plus_win_gives_three_pairs():
    edit = "Paris."
    dpo, _ = pairs.build_dpo([vote("a", better=edit)])
    assert dpo == [dpo_row(GOOD, WORSE), dpo_row(edit, GOOD), dpo_row(edit, WORSE)]


def test_identical_answers_give_no_pair_even_when_one_is_clicked():
    dpo, _ = pairs.build_dpo([vote("a", a=GOOD, b=GOOD)])
    assert dpo == []


def test_sft_takes_edits_first_then_winners():
    sft, _ = pairs.build_sft([vote("b", "c1"), vote("tie", "c2"), vote("both_bad", "c3")])
    assert sft == [{"messages": PROMPT + assistant(WORSE)}]


def test_kto_labels():
    edit = "Paris, on the Seine."
    kto, _ = pairs.build_kto([vote("a", "c1"), vote("both_bad", "c2", better=edit), vote("tie", "c3")])
    labels = [(r["completion"][0]["content"], r["label"]) for r in kto]
    assert labels == [(GOOD, True), (WORSE, False), (GOOD, False), (WORSE, False), (edit, True)]
    assert all(r["prompt"] == PROMPT for r in kto)


def test_build_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown format"):
        pairs.build("ppo", [])


# ---- conflicts ----


def test_conflicting_votes_resolve_by_majority_and_are_reported():
    votes = [vote("a", annotator="x"), vote("a", annotator="y"), vote("b", annotator="z")]
    rows, report = pairs.build_dpo(votes)
    assert rows == [dpo_row(GOOD, WORSE)]
    assert report["conflicts"] == [{"comparison_id": "c1", "choices": {"a": 2, "b": 1}, "resolution": "majority:a"}]


def test_exact_split_is_dropped():
    votes = [vote("a", annotator="x"), vote("b", annotator="y"), vote("a", "c2")]
    rows, report = pairs.build_dpo(votes)
    assert rows == [dpo_row(GOOD, WORSE)]  # only c2 survives
    assert report["dropped_split"] == 1 and report["used"] == 1 and report["comparisons"] == 2


def test_edits_from_the_losing_side_of_a_conflict_are_ignored():
    votes = [vote("a", annotator="x"), vote("a", annotator="y"), vote("b", annotator="z", better="Lyon.")]
    rows, _ = pairs.build_dpo(votes)
    assert all(r["chosen"][0]["content"] != "Lyon." for r in rows)


# ---- lint ----

LONG_CUT = ("The capital of France is Paris, which sits on the river Seine and has been the seat of "
            "government for many centuries, hosting the national assembly and the")
SALES = "Paris! Buy our premium travel package today for only $99 - 50% off, limited time offer at www.trips.com"


def codes(report):
    return {i.code: i.severity for i in report.issues}


def test_lint_clean_data_is_ok():
    report = lint([dpo_row(GOOD, WORSE), dpo_row("Two plus two is four.", "Five.",
                                                      [{"role": "user", "content": "2+2?"}])])
    assert report.ok and report.issues == ()
    assert "No issues" in report.to_markdown()


@pytest.mark.parametrize("row, code, severity", [
    (dpo_row(GOOD, GOOD), "chosen_equals_rejected", "error"),
    (dpo_row("  ", WORSE), "empty_answer", "error"),
    (dpo_row(LONG_CUT, WORSE), "truncated_chosen", "warning"),
    (dpo_row(GOOD, LONG_CUT), "truncated_rejected", "warning"),
    (dpo_row("Paris.", "x" * 60), "length_ratio", "warning"),
    (dpo_row("Dear, how can I help you?", WORSE), "canned_chosen", "error"),
    (dpo_row(SALES, WORSE), "sales_chosen", "error"),
])
def test_lint_flags(row, code, severity):
    report = lint([dpo_row(GOOD, WORSE), row])
    assert codes(report).get(code) == severity
    issue = next(i for i in report.issues if i.code == code)
    assert issue.examples == (1,) and issue.count == 1
    assert report.ok == (severity != "error")


def test_lint_duplicates_point_at_the_repeat():
    report = lint([dpo_row(GOOD, WORSE), dpo_row(WORSE, GOOD), dpo_row(GOOD, WORSE)])
    assert codes(report) == {"duplicate": "warning"}
    assert report.warnings[0].examples == (2,)


def test_isolated_canned_answer_is_a_warning_a_pattern_is_an_error():
    clean = [dpo_row(f"Answer number {i} is here.", WORSE) for i in range(39)]
    canned = dpo_row("Hello! How can I help you today?", WORSE)
    assert codes(lint(clean + [canned]))["canned_chosen"] == "warning"  # 1 of 40
    assert codes(lint(clean + [canned] * 3))["canned_chosen"] == "error"  # 3 of 42


def test_sales_talk_is_fine_when_the_prompt_asks_for_it():
    shopping = [{"role": "user", "content": "Which travel package should I buy, and what is the price?"}]
    assert "sales_chosen" not in codes(lint([dpo_row(SALES, WORSE, shopping)]))


def test_truncation_heuristic():
    assert not looks_truncated("Paris")  # short answers need no punctuation
    assert looks_truncated(LONG_CUT)
    assert not looks_truncated(LONG_CUT + ".")
    assert looks_truncated("Here is the code you asked for, written in Python " * 2 + ":\n```python\nprint(1)")
    assert not looks_truncated("Steps to follow for the whole process, in order of importance " * 2 + ":\n- step one")


def test_lint_report_serialises():
    report = lint([dpo_row(GOOD, GOOD), dpo_row(LONG_CUT, WORSE)])
    data = report.to_dict()
    assert data["ok"] is False and data["rows"] == 2
    assert [i["code"] for i in data["issues"]][0] == "chosen_equals_rejected"  # errors first
    markdown = report.to_markdown()
    assert "1 errors, 1 warnings" in markdown and "`truncated_chosen`" in markdown


# ---- agreement and position bias ----


def test_cohen_kappa_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4
    pairs_ = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert agreement.cohen_kappa(pairs_) == pytest.approx(0.4)
    assert agreement.cohen_kappa([("a", "a")] * 3) is None  # chance agreement is total: undefined


def test_krippendorff_alpha_matches_the_published_nominal_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, nominal alpha 0.743
    coders = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3",
              ". 3 3 3 2 3 4 2 2 5 1 .", "1 2 3 3 2 4 4 1 2 5 1 ."]
    units = [[v for v in column if v != "."] for column in zip(*(c.split() for c in coders))]
    assert agreement.krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)
    assert agreement.krippendorff_alpha_nominal([["a"], ["b"]]) is None


def test_agreement_and_position_bias_from_votes():
    votes = [vote("a", "c1", "x"), vote("a", "c1", "y"), vote("b", "c2", "x"), vote("b", "c2", "y"),
             vote("tie", "c3", "x"), vote("a", "c3", "y"), vote("a", "c4", "x")]
    result = agreement.agreement(votes)
    assert result["comparisons"] == 3
    assert result["cohen_kappa"][0]["annotators"] == ["x", "y"] and result["cohen_kappa"][0]["n"] == 3
    assert 0 < result["krippendorff_alpha"] < 1
    assert agreement.position_bias(votes) == {"decisive": 6, "left_wins": 4, "left_share": pytest.approx(4 / 6)}
