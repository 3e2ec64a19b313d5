"""A fine-tuning task whose reference answers are computed, never written by a model.

Three templated families, drawn from a seeded RNG: write an ISO date in words, convert
kilometres to metres, sort a few words alphabetically. Every answer is one sentence in a
fixed form, so ROUGE-L against the computed reference measures whether a method taught the
model the task (the form and the computed content), and a held-out split uses values the
training rows never showed. The prompted base gets SYSTEM_PROMPT, which spells out each form:
the fair "try a prompt first" baseline.

    from bench.finetune_task import write_task
    files = write_task(Path("work"), n_train=96, n_heldout=24)
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = ["apple", "river", "candle", "zebra", "maple", "orbit", "lemon", "violin", "harbor", "tulip", "anchor",
         "pepper", "quartz", "meadow", "falcon", "ginger", "island", "jacket", "kettle", "nectar", "bubble",
         "dragon", "easel", "walnut"]
SYSTEM_PROMPT = (
    "Answer with exactly one sentence and nothing else. For a date, write: 'The date YYYY-MM-DD is D Month YYYY.' "
    "For a conversion, write: 'N kilometres is M metres.' For sorting, write: 'In alphabetical order: a, b, c.'"
)


def date_row(rng: random.Random) -> tuple[str, str]:
    day = date(1990, 1, 1) + timedelta(days=rng.randrange(365 * 40))
    return (f"Write the date {day.isoformat()} in words.",
            f"The date {day.isoformat()} is {day.day} {MONTHS[day.month - 1]} {day.year}.")


def one_year_date_row(rng: random.Random) -> tuple[str, str]:
    """Dates of 1996 only: a narrow, homogeneous training set (the over-training window's)."""
    day = date(1996, 1, 1) + timedelta(days=rng.randrange(366))
    return (f"Write the date {day.isoformat()} in words.",
            f"The date {day.isoformat()} is {day.day} {MONTHS[day.month - 1]} {day.year}.")


def conversion_row(rng: random.Random) -> tuple[str, str]:
    km = rng.randrange(2, 500)
    return f"Convert {km} kilometres to metres.", f"{km} kilometres is {km * 1000} metres."


def sorting_row(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randrange(3, 6))
    return (f"Sort these words alphabetically: {', '.join(words)}.",
            f"In alphabetical order: {', '.join(sorted(words))}.")


FAMILIES = (date_row, conversion_row, sorting_row)


def rows(n: int, seed: int, exclude: set[str] = frozenset(), families: tuple = FAMILIES) -> list[tuple[str, str]]:
    """n (prompt, reference) pairs, the families taking turns; prompts in `exclude` are drawn again."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        prompt, reference = families[len(out) % len(families)](rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, reference))
    return out


def write_task(folder: Path, n_train: int = 96, n_heldout: int = 24, seed: int = 0,
               families: tuple = FAMILIES, heldout_families: tuple | None = None) -> dict[str, Path]:
    """SFT rows (trl conversational), held-out prompts and their references, as the CLIs read them.
    `heldout_families` (default: the training families) may be wider than the training set."""
    train = rows(n_train, seed, families=families)
    heldout = rows(n_heldout, seed + 1, exclude={p for p, _ in train}, families=heldout_families or families)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": folder / "train.jsonl", "prompts": folder / "heldout_prompts.jsonl",
             "references": folder / "heldout_references.jsonl"}
    files["train"].write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                               {"role": "assistant", "content": r}]}) + "\n"
                                      for p, r in train))
    files["prompts"].write_text("".join(json.dumps({"prompt": p}) + "\n" for p, _ in heldout))
    files["references"].write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in heldout))
    return files
