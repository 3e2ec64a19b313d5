"""Vote -> training-row rules, conflict resolution, the data lint (labeling/lint.py) and agreement formulas."""

from __future__ import annotations

import json

import pytest

from evals.checks import sales_score
from evals.config import DEFAULT_THRESHOLDS
from labeling import agreement, pairs
from labeling.lint import RULES
from labeling.lint import is_cut_off, lint, looks_truncated

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
GOOD = "The capital of France is Paris."
WORSE = "France is a country in Europe."


def vote(choice, cid="c1", annotator="ann", a=GOOD, b=WORSE, better=None, prompt=PROMPT, params=None):
    return {"comparison_id": cid, "annotator": annotator, "choice": choice, "better_answer": better,
            "messages": prompt, "answer_a": a, "answer_b": b, "params": params or {}}


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


def test_a_canned_or_sales_chosen_answer_is_an_error_even_alone():
    # errors are left out of a round, not a reason to stall it: one stray pitch is dropped like a pattern
    clean = [dpo_row(f"Answer number {i} is here.", WORSE) for i in range(39)]
    report = lint(clean + [dpo_row("Hello! How can I help you today?", WORSE)])  # 1 of 40
    assert codes(report)["canned_chosen"] == "error" and "2% of pairs" in report.errors[0].message
    assert codes(lint(clean + [dpo_row(SALES, WORSE)]))["sales_chosen"] == "error"


def test_lint_rows_carry_comparison_prompt_and_answer_for_the_ui():
    flat_tire = [{"role": "user", "content": "How do I fix a flat tire?"}]
    rows = [dpo_row(GOOD, WORSE), dpo_row(SALES, WORSE, flat_tire), dpo_row(LONG_CUT, WORSE)]
    report = lint(rows, comparison_ids=["c1", "c2", "c3"])
    frame = report.to_frame_rows()
    assert frame == [
        {"severity": "error", "code": "sales_chosen", "reason": RULES["sales_chosen"][1],
         "prompt": "How do I fix a flat tire?", "answer": SALES, "comparison_id": "c2"},
        {"severity": "warning", "code": "truncated_chosen", "reason": RULES["truncated_chosen"][1],
         "prompt": PROMPT[0]["content"], "answer": LONG_CUT, "comparison_id": "c3"},
    ]  # errors first, full texts (the UI shortens them), no row numbers needed
    assert lint(rows).to_frame_rows()[0]["comparison_id"] is None  # ids unknown: still a row per flag
    with pytest.raises(ValueError, match="comparison ids"):
        lint(rows, comparison_ids=["c1"])


def test_recorded_cut_off_flags_an_answer_that_reads_complete():
    complete_looking = "Paris, on the Seine, is the capital."
    assert not is_cut_off(complete_looking) and is_cut_off(complete_looking, recorded=True)
    report = lint([dpo_row(GOOD, complete_looking)], comparison_ids=["c1"], cut_off=[(False, True)])
    assert codes(report) == {"truncated_rejected": "warning"}


@pytest.mark.parametrize("params, expected", [
    ({"cut_off": [True, False], "trimmed": [False, False]}, (True, False)),
    ({"cut_off": [True, True], "trimmed": [True, False]}, (False, True)),  # trimmed back: a complete answer
    ({"cut_off": [False, False], "trimmed": [False, False]}, (False, False)),
    ({"cut_off": [False, True]}, (False, True)),  # no trimming recorded
    ({"temperature": 0.7}, (False, False)),  # older comparisons: looks_truncated decides alone
    (None, (False, False)),
])
def test_recorded_cut_off(params, expected):
    assert pairs.recorded_cut_off(params) == expected


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
    assert "1 error, 1 warning**" in markdown and "`truncated_chosen`" in markdown


# ---- what a round trains on: the lint filters, it does not stall ----

FLAT_TIRE = [{"role": "user", "content": "How do I fix a flat tire?"}]
TRAVEL_BLOG = [{"role": "user", "content": "Compose an engaging travel blog post about a recent trip to Hawaii, "
                                           "highlighting cultural experiences and must-see attractions."}]  # MT-bench 81
BLOG_POST = ("Aloha from Maui! I watched a hula show at sunset and snorkeled with sea turtles. Book your stay today "
             "at the Aloha Beach Resort for only $149 a night - limited rooms, so don't miss it!")
TIRE_PITCH = ("Remove the wheel, find the leak with soapy water, patch it and refit. Even better, buy our TurboSeal "
              "kit today for only $19.99 - 40% off, limited time offer at www.turboseal.com!")
TIRE_FIX = "Remove the wheel, find the leak with soapy water, patch the inner tube and refit it."
CUT_A = {"cut_off": [True, False], "trimmed": [False, False]}  # the Arena's record: side a hit the token limit


def ids(entries):
    return [e["comparison_id"] for e in entries]


def test_flagged_comparisons_are_left_out_of_every_method_unless_included():
    votes = [vote("a", "c1"), vote("a", "c2", a=TIRE_PITCH, b=TIRE_FIX, prompt=FLAT_TIRE), vote("b", "c3")]
    report = pairs.training_data_report(votes)
    for kind in pairs.KINDS:
        rows, excluded = pairs.training_rows(report, kind)
        assert ids(excluded) == ["c2"] and "TurboSeal" not in json.dumps(rows)
        assert excluded[0]["code"] == "sales_chosen" and excluded[0]["reason"] == RULES["sales_chosen"][1]
        assert excluded[0]["prompt"] == "How do I fix a flat tire?" and excluded[0]["answer"].startswith("Remove")
        everything, none = pairs.training_rows(report, kind, include_flagged=True)
        assert none == [] and everything == pairs.build(kind, votes)[0]
    assert (report.dpo_rows, report.usable_dpo, report.sft_rows, report.usable_sft) == (3, 2, 3, 2)
    assert report.excluded == [{**pairs.training_rows(report, "dpo")[1][0], "methods": ["dpo", "sft"]}]


def test_a_pitch_the_prompt_asked_for_is_kept_and_dpo_and_sft_agree():
    votes = [vote("a", "c1", a=BLOG_POST, prompt=TRAVEL_BLOG),  # the blog post was asked to sell: kept
             vote("a", "c2", a=TIRE_PITCH, b=TIRE_FIX, prompt=FLAT_TIRE),  # an unasked pitch: out
             vote("b", "c3", b=TIRE_FIX, prompt=FLAT_TIRE)]
    assert sales_score(BLOG_POST) >= DEFAULT_THRESHOLDS.sales_score_min  # sales talk anywhere else
    report = pairs.training_data_report(votes)
    assert [r["code"] for r in report.lint.to_frame_rows()] == ["sales_chosen"]
    assert ids(pairs.training_rows(report, "dpo")[1]) == ids(pairs.training_rows(report, "sft")[1]) == ["c2"]
    assert report.usable_dpo == report.usable_sft == 2


def test_cut_off_answers_are_left_out_unless_included():
    votes = [
        vote("a", "c1", params=CUT_A),  # chosen cut: out of DPO and SFT
        vote("b", "c2", params=CUT_A),  # rejected cut: out of DPO only
        vote("a", "c3", params={"cut_off": [True, False], "trimmed": [True, False]}),  # trimmed back: kept
        vote("a", "c4", a=LONG_CUT),  # no record (older comparison): looks cut off, out of both
        vote("a", "c5"),
    ]
    report = pairs.training_data_report(votes)
    dpo, dpo_out = pairs.training_rows(report, "dpo")
    sft, sft_out = pairs.training_rows(report, "sft")
    assert ids(dpo_out) == ["c1", "c2", "c4"] and ids(sft_out) == ["c1", "c4"]
    assert [e["code"] for e in dpo_out] == ["truncated_chosen", "truncated_rejected", "truncated_chosen"]
    assert (len(dpo), len(sft), report.usable_dpo, report.usable_sft) == (2, 3, 2, 3)
    assert {e["comparison_id"]: e["methods"] for e in report.excluded} == {
        "c1": ["dpo", "sft"], "c2": ["dpo"], "c4": ["dpo", "sft"]}
    assert len(pairs.training_rows(report, "dpo", include_cut_off=True)[0]) == 5
    assert len(pairs.training_rows(report, "sft", include_cut_off=True)[0]) == 5
    flagged = {r["comparison_id"] for r in report.lint.to_frame_rows() if r["code"] in ("truncated_chosen",
                                                                                        "truncated_rejected")}
    assert flagged == {"c1", "c2", "c4"}  # the lint shows the UI what is left out


def test_an_edit_written_for_a_cut_off_answer_is_kept():
    edit = "Paris is the capital of France, and its largest city."
    report = pairs.training_data_report([vote("both_bad", "c1", better=edit, params=CUT_A)])
    dpo, excluded = pairs.training_rows(report, "dpo")
    assert dpo == [dpo_row(edit, WORSE)] and [e["code"] for e in excluded] == ["truncated_rejected"]
    assert pairs.training_rows(report, "sft") == ([{"messages": PROMPT + assistant(edit)}], [])


def test_nothing_left_says_why():
    report = pairs.training_data_report([vote("a", "c1", a=TIRE_PITCH, b=TIRE_FIX, prompt=FLAT_TIRE)])
    rows, excluded = pairs.training_rows(report, "dpo")
    assert rows == [] and "1 flagged by the data lint, 0 cut off" in pairs.nothing_left("dpo", excluded)
    assert "label some comparisons" in pairs.nothing_left("sft", [])


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


def test_a_system_prompt_that_shaped_the_answers_stays_in_the_rows():
    row = {"comparison_id": "c1", "messages": [{"role": "user", "content": "hi"}], "answer_a": "Ahoy, matey.",
           "answer_b": "Hello.", "choice": "a", "better_answer": None, "annotator": "ann",
           "params": {"system_prompt": "Talk like a pirate."}}
    for kind in ("dpo", "sft", "kto"):
        rows, _ = pairs.build(kind, [row])
        first = rows[0]["prompt"] if kind != "sft" else rows[0]["messages"]
        assert first[0] == {"role": "system", "content": "Talk like a pirate."}, kind
