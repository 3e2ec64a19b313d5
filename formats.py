"""Rows in and out of the store: prompt files, conversation checks, atomic snapshot writes.

Pure file and value handling with no database, shared by the Store, the
labeling CLI and the Arena's prompt import.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path

ROLES = ("system", "user", "assistant")


def text_content(content) -> str | None:
    """A string, or Gradio 6's normalised form: a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None  # files and components cannot become training text


def clean_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} dicts")
    cleaned = []
    for m in messages:
        content = text_content(m.get("content")) if isinstance(m, dict) else None
        if content is None or m.get("role") not in ROLES:
            raise ValueError(f"bad message {m!r}: need role in {ROLES} and text content")
        cleaned.append({"role": m["role"], "content": content})  # drop UI-only keys (metadata, options)
    if cleaned[-1]["role"] != "user":
        raise ValueError("the conversation used as prompt must end with a user message")
    return cleaned


def content_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def load_prompt_file(path) -> list[dict]:
    """Rows of {prompt, category, reference} from JSONL ({"prompt"} or MT-bench {"turns"}) or CSV."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        if records and "prompt" not in records[0]:
            raise ValueError(f"{path}: CSV needs a 'prompt' column")
        numbered = enumerate(records, start=2)  # line 1 is the header
    elif path.suffix.lower() in (".jsonl", ".json"):
        numbered = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    else:
        raise ValueError(f"{path}: unsupported prompt file type; use .jsonl or .csv")
    rows = []
    for number, record in numbered:
        turns = record.get("turns") if isinstance(record, dict) else None
        # MT-bench: the first turn stands alone; later turns depend on the model's first answer
        prompt = turns[0] if isinstance(turns, list) and turns else (record or {}).get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}:{number}: no 'prompt' text (or MT-bench 'turns')")
        reference = record.get("reference")
        if isinstance(reference, list):
            reference = reference[0] if reference else None
        rows.append({"prompt": prompt.strip(), "category": record.get("category") or None,
                     "reference": reference or None})
    if not rows:
        raise ValueError(f"{path}: no prompts found")
    return rows


def canonical_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def write_rows(rows: list[dict], path) -> Path:
    """Write training rows to .jsonl or .parquet atomically (temp file + fsync + rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{path}: output must end in .jsonl or .parquet")
    if not rows:
        raise ValueError("no rows to write: label some comparisons first")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if suffix == ".jsonl":
                f.write(canonical_jsonl(rows))
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.Table.from_pylist(rows), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
