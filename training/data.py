"""The snapshot a round trains on: read, checked row by row, split into train and held-out.

Anything unusable is refused with BadInput, whose one-line message the CLI prints before
exiting 2; nothing is trained and no checkpoint appears.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
        data = data.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                        remove_columns=["messages"])
    return data


CORPUS_SUFFIXES = (".txt", ".md", ".markdown")
MAX_CHUNK_CHARS = 2000  # a CPT row: paragraphs joined up to this; packing then cuts max_length-token blocks


def corpus_files(path: Path) -> list[Path]:
    """A CPT corpus: one .txt/.md/.jsonl file, or a folder of them (searched recursively, in name order)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*CORPUS_SUFFIXES, ".jsonl"))
    return [path] if path.is_file() else []


def corpus_texts(path: Path) -> list[str]:
    """The corpus as texts of at most MAX_CHUNK_CHARS, split on paragraph breaks. JSONL lines give their "text"."""
    import json

    files = corpus_files(path)
    if not files:
        raise BadInput(f"no corpus at {path}: give a .txt, .md or .jsonl file, or a folder of them")
    documents = []
    for file in files:
        try:
            raw = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read {file.name}: {one_line(exc)}") from exc
        if file.suffix.lower() == ".jsonl":
            for number, line in enumerate(raw.splitlines(), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        raise BadInput(f"{file.name} line {number}: not JSON") from None
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise BadInput(f"{file.name} line {number}: needs a \"text\" string")
                    documents.append(row["text"])
        elif file.suffix.lower() in CORPUS_SUFFIXES:
            documents.append(raw)
        else:
            raise BadInput(f"{file.name}: a corpus file must be .txt, .md or .jsonl")
    chunks = []
    for document in documents:
        current = ""
        for paragraph in (p.strip() for p in document.split("\n\n")):
            if not paragraph:
                continue
            if current and len(current) + len(paragraph) + 2 > MAX_CHUNK_CHARS:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            chunks.append(current)
    return chunks


def load_corpus(path: Path, min_rows: int):
    """A CPT corpus as a `datasets.Dataset` with one "text" column, or BadInput saying why not."""
    import datasets

    chunks = corpus_texts(path)
    if len(chunks) < min_rows:
        raise BadInput(f"the corpus at {path} makes {len(chunks)} chunks of up to {MAX_CHUNK_CHARS} characters; "
                       f"a cpt round needs at least {min_rows} (add text, or lower --min-pairs)")
    return datasets.Dataset.from_dict({"text": chunks})


def split_holdout(data, fraction: float, seed: int):
    """(train, held-out): at least one row on each side."""
    n_holdout = min(len(data) - 1, max(1, round(len(data) * fraction)))
    parts = data.train_test_split(test_size=n_holdout, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def file_sha256(path: Path) -> str:
    """Of a file, or of a corpus folder (its files' names and contents, in order)."""
    digest = hashlib.sha256()
    for file in corpus_files(path) if Path(path).is_dir() else [Path(path)]:
        if Path(path).is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
