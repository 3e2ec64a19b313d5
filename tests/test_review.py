"""Reviewer exclusions and labeling guidelines in the store (labeling/review.py): an excluded
comparison's votes leave exports and snapshots (named in the manifest), the exclusion and its lift
come back from the journal once, and each vote records the guidelines version in force."""

from __future__ import annotations

import json

import pytest

from formats import read_manifest
from labeling.__main__ import main as labeling_cli
from labeling.store import Store
from tests.test_journal import lose_db
from tests.test_store import PITCH, add


def vote_on(store: Store, n: int, annotator: str = "ann") -> list[str]:
    ids = []
    for i in range(n):
        ids.append(add(store, [{"role": "user", "content": f"Name primary colour number {i}."}], a=f"Red {i}.",
                       b=f"Blue is one, {i}."))
        store.record_vote(ids[-1], annotator, "a")
    return ids


def exported(data_dir, out, *extra) -> list[str]:
    assert labeling_cli(["export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(out), *extra]) == 0
    return [json.loads(line)["chosen"][0]["content"] for line in out.read_text().splitlines()]


def test_an_excluded_comparison_leaves_exports_and_snapshots_and_the_manifest_says_who_and_why(data_dir, tmp_path):
    with Store(data_dir) as store:
        ids = vote_on(store, 3)
        store.record_vote(ids[1], "bob", "a")  # two votes on one comparison: both go
        with pytest.raises(ValueError, match="reason is empty"):
            store.exclude(ids[1], "rita", "  ")
        with pytest.raises(ValueError, match="unknown comparison"):
            store.exclude("00000000-0000-4000-8000-000000000000", "rita", "typo")
        assert store.exclude(ids[1], "rita", "the prompt leaks a password") is True
        assert store.exclude(ids[1], "rita", "again") is False  # a double click changes nothing
        assert [r["comparison_id"] for r in store.labeled_rows()] == [ids[0], ids[2]]
        assert len(store.labeled_rows(include_excluded=True)) == 4  # the annotator signals still see them
        assert store.stats()["excluded"] == 1 and store.stats()["votes"] == 4
        snapshot = store.training_snapshot("dpo", tmp_path / "snaps")
        assert snapshot.rows == 2
        [entry] = read_manifest(snapshot.path)["excluded"]
        assert entry["comparison_id"] == ids[1] and entry["code"] == "excluded_by_reviewer"
        assert entry["reason"] == "excluded by rita: the prompt leaks a password"
        assert entry["prompt"] == "Name primary colour number 1."
        [listed] = store.exclusions()
        assert (listed["comparison_id"], listed["by_user"], listed["votes"]) == (ids[1], "rita", 2)
    assert exported(data_dir, tmp_path / "out.jsonl") == ["Red 0.", "Red 2."]
    with Store(data_dir) as store:
        assert store.lift_exclusion(ids[1], "sam", "checked: no password") is True
        assert store.lift_exclusion(ids[1], "sam") is False
        assert store.exclusions() == []
        assert [(h["action"], h["by_user"]) for h in store.exclusion_history()] == [("lift", "sam"), ("exclude", "rita")]
        assert store.training_snapshot("dpo", tmp_path / "snaps").rows == 3
    assert exported(data_dir, tmp_path / "out.jsonl") == ["Red 0.", "Red 1.", "Red 2."]


def test_excluding_what_the_lint_flags_unblocks_a_round(data_dir, tmp_path):
    with Store(data_dir) as store:
        bad = add(store, a=PITCH)
        store.record_vote(bad, "ann", "a")
        with pytest.raises(ValueError, match="1 flagged by the data lint"):
            store.training_snapshot("sft", tmp_path)
        [issue] = store.training_data_report().lint.errors
        assert [r["comparison_id"] for r in issue.rows] == [bad]  # the lint names the comparison to exclude
        store.exclude(bad, "rita", "a pitch")
        assert store.training_data_report().lint.errors == []
        with pytest.raises(ValueError, match="excluded by reviewers"):
            store.training_snapshot("sft", tmp_path)


def test_exclusions_lifts_and_guidelines_come_back_from_the_journal_once(data_dir, tmp_path):
    backup = tmp_path / "backup"
    with Store(data_dir, journal_dir=backup) as store:
        store.save_guidelines("# Rules\nPrefer the shorter correct answer.", "admin")
        ids = vote_on(store, 3)
        store.exclude(ids[0], "rita", "spam")
        store.exclude(ids[1], "rita", "off topic")
        store.lift_exclusion(ids[1], "rita", "on second thought")
        before = ([r["comparison_id"] for r in store.labeled_rows()], store.exclusion_history(), store.guidelines())
    lose_db(data_dir)
    for _ in range(2):  # the second restore changes nothing
        with Store(data_dir) as store:
            found = store.restore_from_journal(backup)
            after = ([r["comparison_id"] for r in store.labeled_rows()], store.exclusion_history(), store.guidelines())
        assert after == before
    assert before[0] == [ids[1], ids[2]] and found.get("exclusions", 0) == 0
    # the journal alone (the CLI's path while the app holds the DB, or without one) leaves it out too
    no_db = tmp_path / "no-db"
    assert exported(no_db, tmp_path / "out.jsonl", "--sync-dir", str(backup)) == ["Red 1.", "Red 2."]
    assert not no_db.exists()


def test_each_vote_records_the_guidelines_version_in_force(data_dir):
    with Store(data_dir) as store:
        assert store.guidelines() is None
        [first] = vote_on(store, 1)
        version = store.save_guidelines("Prefer answers that are correct first, short second.", "admin")
        assert store.save_guidelines("Prefer answers that are correct first, short second.\n", "admin") == version
        [second] = vote_on(store, 1, "bob")
        edited = store.save_guidelines("Correct first. Ties are fine.", "admin")
        [third] = vote_on(store, 1, "cy")
        versions = {r["comparison_id"]: r["guidelines_version"] for r in store.labeled_rows()}
        assert versions == {first: None, second: version, third: edited} and version != edited
        assert store.guidelines()["text"] == "Correct first. Ties are fine."
        assert store.guidelines()["edited_by"] == "admin"


def test_the_train_tabs_lint_table_names_each_rows_comparison(data_dir):
    from types import SimpleNamespace

    from ui.train import lint_table

    with Store(data_dir) as store:
        bad = add(store, a=PITCH)
        store.record_vote(bad, "ann", "a")
        shown = lint_table(SimpleNamespace(store=store))
        assert f"<code>{bad}</code>" in shown and "Annotators tab (Review)" in shown
        store.exclude(bad, "rita", "a pitch")
        assert bad not in lint_table(SimpleNamespace(store=store))


def test_the_queue_serves_split_votes_first_then_unlabeled_then_the_widest_answer_gap(data_dir):
    with Store(data_dir) as store:
        store.import_prompts([{"prompt": p} for p in ("agreed", "gap", "split", "fresh")], source="t")
        ids = {json.loads(row["messages"])[0]["content"]: row["id"]
               for row in store._db.rows("SELECT id, messages FROM prompts")}

        def label(prompt, a, b, *choices):
            cid = add(store, [{"role": "user", "content": prompt}], a=a, b=b, prompt_id=ids[prompt])
            for who, choice in zip(("ann", "bob"), choices):
                store.record_vote(cid, who, choice)

        label("agreed", "Red.", "Rot.", "a", "a")  # alike answers, agreed votes: little left to learn
        label("gap", "Red.", "Red is a primary colour in the painters' model.", "a")
        label("split", "Red.", "Rot.", "a", "b")
        order = []
        for _ in range(4):
            row = store.next_prompt("cy")
            order.append(row["prompt"])
            add(store, row["messages"], annotator="cy", prompt_id=row["id"])  # served: the next one comes
        assert order == ["split", "fresh", "gap", "agreed"]
        assert store.next_prompt("cy") is None


def test_votes_split_only_when_they_judge_the_same_thing_differently(data_dir):
    """An `a` on one comparison and a `b` on another are not a dispute: each comparison shuffles its
    sides, and two comparisons of the base against itself are four different samples."""
    with Store(data_dir) as store:
        store.import_prompts([{"prompt": p} for p in ("samples", "models", "fresh", "rounds")], source="t")
        ids = {json.loads(row["messages"])[0]["content"]: row["id"]
               for row in store._db.rows("SELECT id, messages FROM prompts")}

        def label(prompt, who, choice, model_a, model_b):
            cid = add(store, [{"role": "user", "content": prompt}], a="Red.", b="Rot.", model_a=model_a,
                      model_b=model_b, prompt_id=ids[prompt], annotator=who)
            store.record_vote(cid, who, choice)

        label("samples", "ann", "a", "base", "base")  # the left sample, then the right one: no dispute
        label("samples", "bob", "b", "base", "base")
        label("models", "ann", "a", "base", "round-1")  # ann prefers the base, bob the round
        label("models", "bob", "a", "round-1", "base")
        label("rounds", "ann", "b", "base", "round-1")  # round-1 beats the base, round-2 beats round-1: they agree
        label("rounds", "bob", "a", "round-2", "round-1")
        order = []
        for _ in range(4):
            row = store.next_prompt("cy")
            order.append(row["prompt"])
            add(store, row["messages"], annotator="cy", prompt_id=row["id"])
        assert order == ["models", "fresh", "samples", "rounds"]  # the last two by age: neither split
