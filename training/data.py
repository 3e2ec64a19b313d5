"""The snapshot a round trains on: read, checked row by row, split into train and held-out.

Anything unusable is refused with BadInput, whose one-line message the CLI prints before
exiting 2; nothing is trained and no checkpoint appears.
"""

from __future__ import annotations

import random
from pathlib import Path

import formats
from models.loading import templated_prompt_tokens
from formats import MAX_CHUNK_CHARS, CorpusError, corpus_files, corpus_sha256  # noqa: F401 (corpus_files: ui.train)

COLUMNS = {"dpo": ("prompt", "chosen", "rejected"), "sft": ("messages",)}


class BadInput(ValueError):
    """Unusable data, config, base model or adapter: the CLI exits 2 with this one-line message."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")


def _is_messages(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def load_snapshot(path: Path, method: str, min_rows: int, cache_dir: Path):
    """The snapshot as a `datasets.Dataset` in trl's conversational format, or BadInput saying why not."""
    import datasets

    path = Path(path)
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    if not path.is_file():
        raise BadInput(f"snapshot file not found: {path}")
    if kind is None:
        raise BadInput(f"snapshot must be a .jsonl or .parquet file, got {path.name}")
    try:
        data = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=str(cache_dir))
    except Exception as exc:  # datasets raises many types for malformed files
        raise BadInput(f"cannot read {path.name}: {one_line(exc)}") from exc
    needed = COLUMNS[method]
    missing = [c for c in needed if c not in data.column_names]
    if missing:
        raise BadInput(f"{path.name} lacks column(s) {', '.join(missing)} needed for {method} "
                       f"(has: {', '.join(data.column_names) or 'none'})")
    if len(data) < min_rows:
        raise BadInput(f"{path.name} has {len(data)} rows; a {method} round needs at least {min_rows}")
    for i, row in enumerate(data.select_columns(list(needed))):
        bad = [c for c in needed if not _is_messages(row[c])]
        if bad:
            raise BadInput(f"{path.name} row {i + 1}: {bad[0]!r} must be a non-empty list of "
                           "{role, content} messages (trl conversational format)")
        if method == "sft" and (len(row["messages"]) < 2 or row["messages"][-1]["role"] != "assistant"):
            raise BadInput(f"{path.name} row {i + 1}: messages must end with an assistant answer to a prompt")
    data = data.select_columns(list(needed))
    if method == "sft":
        # prompt/completion rows make trl compute the loss on the answer only, not on the user's text
        data = data.map(lambda r: {"prompt": prompt_of(r), "completion": r["messages"][-1:]},
                        remove_columns=["messages"])
    return data


def corpus_texts(path: Path, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """formats.corpus_texts, with an unusable corpus refused as BadInput (the CLI exits 2)."""
    try:
        return formats.corpus_texts(path, max_chars)
    except CorpusError as exc:
        raise BadInput(str(exc)) from exc


def load_corpus(path: Path, min_rows: int):
    """A CPT corpus as a `datasets.Dataset` with one "text" column, or BadInput saying why not."""
    import datasets

    chunks = corpus_texts(path)
    if len(chunks) < min_rows:
        raise BadInput(f"the corpus at {path} makes {len(chunks)} chunks of up to {MAX_CHUNK_CHARS} characters; "
                       f"a cpt round needs at least {min_rows} (add text, or lower --min-pairs)")
    return datasets.Dataset.from_dict({"text": chunks})


def prompt_of(row: dict) -> list[dict]:
    """A row's prompt messages: a DPO row's (or a loaded SFT row's) `prompt`, or an SFT conversation less its answer."""
    return row["prompt"] if "prompt" in row else row["messages"][:-1]


def drop_prompts_too_long(data, tokenizer, max_length: int):
    """(rows whose prompt leaves room for an answer, how many were dropped, the longest prompt's tokens).

    A row whose prompt alone fills max_length has nothing of its answer left after truncation: trl
    drops such DPO rows itself, and an SFT row would train on no token. Dropped after the split, they
    could empty the held-out side: a DPO round that held out only long prompts (14 of MT-bench's 80
    questions take 128 tokens or more with SmolLM's template) failed after loading the model. Dropped
    here, the split only sees rows that train."""
    if "prompt" not in data.column_names:
        return data, 0, 0
    lengths = [templated_prompt_tokens(tokenizer, row["prompt"]) for row in data]
    keep = [index for index, length in enumerate(lengths) if length < max_length]
    return data.select(keep), len(data) - len(keep), max(lengths, default=0)


def prompt_groups(data) -> list[str] | None:
    """Each row's first user turn (formats.prompt_key), or None for rows without prompts (a CPT corpus)."""
    if "text" in data.column_names:
        return None
    return [formats.prompt_key(next(iter(formats.user_turns(row)), "")) for row in data]


def split_holdout(data, fraction: float, seed: int, groups: list[str] | None = None):
    """(train, held-out): at least one row on each side, about `fraction` of the rows held out.

    With `groups` (prompt_groups), rows that share a first prompt are held out together. The queue serves a
    prompt again (its votes split, or its answers were far apart), and a conversation's turns share their
    first prompt: split row by row, the held-out loss would be measured on prompts the round trains on, and
    the best step it picks would be the one that memorised them best. Only when every row shares one prompt
    does the held-out row share it too (there is nothing else to hold out)."""
    n_holdout = min(len(data) - 1, max(1, round(len(data) * fraction)))
    if groups is None or len(set(groups)) < 2:
        parts = data.train_test_split(test_size=n_holdout, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    held: list[int] = []
    for group in order:
        size = len(members[group])
        if len(held) + size >= len(data):  # training keeps at least one row
            continue
        if held and abs(len(held) + size - n_holdout) >= abs(len(held) - n_holdout):
            continue  # it would land farther from the held-out share than stopping here: a smaller group may fit
        held += members[group]
    kept = sorted(set(range(len(data))) - set(held))
    return data.select(kept), data.select(sorted(held))


file_sha256 = corpus_sha256  # a snapshot file, or a corpus folder
