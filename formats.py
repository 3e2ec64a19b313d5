"""The files that pass between the rooms, read and written in one place.

- TRL conversational rows: message checks, content hashes, atomic JSONL/Parquet writes.
- Prompt files: JSONL (`{"prompt"}` or MT-bench `{"turns"}`) and CSV.
- Progress files of a training or eval subprocess: `<kind>` events (JSONL),
  a readable log and an atomically replaced status JSON, in the log dir the
  subprocess was given (pipeline.py hands out `runs/<round-id>/`).

Pure file and value handling; imports nothing else of ours.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
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


# ---------------------------------------------------------------- progress files of a subprocess

PROGRESS_NAMES = {  # kind -> (events, log, status); training keeps the original names
    "train": ("metrics.jsonl", "train.log", "status.json"),
    "eval": ("eval.metrics.jsonl", "eval.log", "eval.status.json"),
}
EVENT_FIELDS = ("step", "max_steps", "epoch", "loss", "eval_loss", "rewards/margins", "rewards/accuracies",
                "elapsed_s", "eta_s")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ProgressFiles:
    """Events (for the UI), a log (for people) and a status (for the pipeline) of one run.

    The writer is the subprocess; the reader is pipeline.py. Each event is one
    appended line, and the status file is replaced atomically, so a reader polling
    while the writer works never sees half a record.
    """

    def __init__(self, log_dir: Path, run_id: str, kind: str = "train", fresh: bool = True):
        self.dir = Path(log_dir)
        self.run_id = run_id
        self.kind = kind
        events, log, status = PROGRESS_NAMES[kind]
        self.events_path, self.log_path, self.status_path = self.dir / events, self.dir / log, self.dir / status
        if fresh:  # a rerun of a failed round id starts fresh logs
            self.dir.mkdir(parents=True, exist_ok=True)
            for path in (self.events_path, self.log_path):
                path.unlink(missing_ok=True)

    def event(self, event: str, **fields) -> None:
        row = {"event": event, **dict.fromkeys(EVENT_FIELDS), **fields, "time": now_iso()}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def say(self, message: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def status(self, state: str, error: str | None = None, checkpoint: str | None = None) -> None:
        data = {"state": state, "pid": os.getpid(), "round_id": self.run_id, "error": error,
                "checkpoint": checkpoint, "updated_at": now_iso()}
        tmp = self.dir / f".{self.status_path.name}.{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.status_path)  # readers never see half a file

    # ---- reading (pipeline.py)

    def events(self) -> list[dict]:
        """Every complete event line so far (a line still being written is left for the next poll)."""
        rows = []
        try:
            with self.events_path.open() as handle:
                for line in handle:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break
        except OSError:
            pass
        return rows

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
