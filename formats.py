"""The files that pass between the rooms, read and written in one place.

- TRL conversational rows: message checks, content hashes, atomic JSONL/Parquet writes,
  and the manifest beside a training snapshot (`<snapshot>.manifest.json`: method, rows,
  what the data lint left out) that the trainer copies into round.json.
- Prompt and reference files: JSONL (`{"prompt"}` or MT-bench `{"turns"}`) and CSV,
  read here for the Arena import, the labeling CLI and the evals alike.
- A text corpus (CPT's training text, the retrieval baseline's documents): .txt/.md files
  and JSONL `{"text"}` lines, one file or a folder, cut into chunks on paragraph breaks.
- Progress files of a training or eval subprocess: `<kind>` events (JSONL),
  a readable log and an atomically replaced status JSON, in the log dir the
  subprocess was given (pipeline.py hands out `runs/<round-id>/`).

Pure file and value handling; imports nothing else of ours.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import unicodedata
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


def canonical_text(text: str) -> str:
    """Text as people read it: NFKC-normalised, without invisible format characters (zero-width
    spaces and joiners, direction marks, BOMs), stripped. Used to compare and hash, never to store:
    "a\u200b" and "a" are the same prompt and the same answer."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def content_hash(messages: list[dict]) -> str:
    canonical = [{**m, "content": canonical_text(m["content"])} for m in messages]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


MAX_PROMPT_CHARS = 8000  # longer than any real chat turn; bigger pastes are almost always mistakes
MAX_PROMPT_FILE_BYTES = 64 * 2**20  # far above any real prompt set; an upload past it is a mistake


class PromptFileError(ValueError):
    """A prompt or reference file that cannot be used; the message names the file (and line)."""


def read_records(path) -> list[tuple[int, dict]]:
    """(line number, record) for every row of a JSONL (.jsonl/.json) or CSV file; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise PromptFileError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl or .csv")
    size = path.stat().st_size
    if size > MAX_PROMPT_FILE_BYTES:
        raise PromptFileError(f"{path} is {size / 2**20:.0f} MiB; prompt files are capped at "
                              f"{MAX_PROMPT_FILE_BYTES // 2**20} MiB: split it")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often start a CSV with a BOM
    except UnicodeDecodeError as e:
        hint = "; it looks like UTF-16: save it as UTF-8" if path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise PromptFileError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}){hint}") from None
    if suffix == ".csv":
        records = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
        try:
            return list(enumerate(records, start=2))  # line 1 is the header
        except csv.Error as e:  # e.g. a field over the csv module's 128 KiB limit
            raise PromptFileError(f"{path}:{records.line_num}: unreadable CSV ({e})") from None
    numbered = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise PromptFileError(f"{path}:{number}: expected a JSON object per line")
        numbered.append((number, record))
    return numbered


def reference_text(record: dict) -> str | None:
    """A reference answer: ours ("reference", a string or one per turn) or MT-bench's ("choices"[0]["turns"][0])."""
    ref = record.get("reference")
    if isinstance(ref, list):  # MT-bench questions carry one reference per turn; we judge the first
        ref = ref[0] if ref else None
    choices = record.get("choices")
    if ref is None and isinstance(choices, list) and choices and isinstance(choices[0], dict):
        turns = choices[0].get("turns") or []
        ref = turns[0] if turns else None
    return ref if isinstance(ref, str) and ref.strip() else None


def load_prompt_file(path) -> list[dict]:
    """Rows of {prompt, id, category, reference} from JSONL ({"prompt"} or MT-bench {"turns"}) or CSV.

    The one reader of prompt files: the Arena import, `python -m labeling import`
    and `python -m evals run` all take the same files. `id` is the record's "id"
    or "question_id", else its position (1-based). Raises PromptFileError.
    """
    path = Path(path)
    records = read_records(path)
    if path.suffix.lower() == ".csv" and records and "prompt" not in records[0][1]:
        raise PromptFileError(f"{path}: CSV needs a 'prompt' column")
    rows = []
    for position, (number, record) in enumerate(records, start=1):
        turns = record.get("turns")
        # MT-bench: the first turn stands alone; later turns depend on the model's first answer
        prompt = turns[0] if isinstance(turns, list) and turns else record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{path}:{number}: no \"prompt\" text (or MT-bench \"turns\" list)")
        if len(prompt) > MAX_PROMPT_CHARS:  # the Arena refuses it, so queued it would block the queue
            raise PromptFileError(f"{path}:{number}: the prompt is {len(prompt):,} characters; the limit is "
                                  f"{MAX_PROMPT_CHARS:,}")
        qid = next((record[k] for k in ("id", "question_id") if record.get(k) not in (None, "")), position)
        rows.append({"prompt": prompt.strip(), "id": str(qid), "category": record.get("category") or None,
                     "reference": reference_text(record)})
    if not rows:
        raise PromptFileError(f"{path} holds no prompts")
    return rows


def load_reference_file(path) -> dict[str, str]:
    """Reference answers keyed by question id and by prompt text (either may match a prompt row)."""
    refs = {}
    for _, record in read_records(path):
        text = reference_text(record)
        if text is None:
            continue
        for key in ("question_id", "id", "prompt"):
            if record.get(key) not in (None, ""):
                refs[str(record[key]).strip() if key == "prompt" else str(record[key])] = text
    if not refs:
        raise PromptFileError(f"{path} holds no references (expected \"reference\" or MT-bench \"choices\")")
    return refs


# ---- the gate's prompts stay out of training --------------------------------------------------
# The promotion gate judges a round on a prompt set. A round that trained on those prompts is judged on
# questions it has seen, so its figures flatter it. The Arena import and `python -m labeling import`
# leave the gate's prompts out of the labeling queue, and the evals leave out of the gate any prompt
# the round (or a round it continued) trained on anyway, a typed one say.

GATE_PROMPTS = Path(__file__).parent / "evals" / "prompts" / "default.jsonl"  # the gate's bundled set
GATE_POINTER = "gate_prompts.json"  # in the data dir: the set the app last judged rounds with (its --eval-prompts)


def write_gate_pointer(data_dir, gate_prompts) -> Path:
    """Record, for `python -m labeling import` on the same data dir, which prompt set the app's gate uses."""
    return write_atomic(Path(data_dir) / GATE_POINTER, json.dumps({"path": str(gate_prompts)}).encode())


def gate_prompts_of(data_dir) -> Path:
    """The gate set the app last started on `data_dir` judges with (the bundled set when no app ran there).
    A recorded set that is gone raises PromptFileError: guessing would queue the gate's own prompts."""
    try:
        recorded = Path(json.loads((Path(data_dir) / GATE_POINTER).read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return GATE_PROMPTS
    if not recorded.is_file():
        raise PromptFileError(f"the app on {data_dir} judges rounds with {recorded}, which is gone: "
                              "pass the gate's prompt set with --eval-prompts")
    return recorded


def prompt_key(text: str) -> str:
    """What two prompts are compared by: the canonical text, ignoring case and how it is spaced."""
    return " ".join(canonical_text(text).casefold().split())


def user_turns(row: dict) -> list[str]:
    """The user turns of a prompt-file row ({"prompt"} or {"messages"}) or of a training row (TRL's
    conversational `prompt` or `messages`, or a plain `prompt` string)."""
    turns = []
    for key in ("prompt", "messages"):
        value = row.get(key)
        if isinstance(value, str):
            turns.append(value)
        elif isinstance(value, list):
            turns += [text_content(m.get("content")) or "" for m in value
                      if isinstance(m, dict) and m.get("role") == "user"]
    return [t for t in turns if t.strip()]


def leave_out_gate_prompts(rows: list[dict], gate_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows to queue, rows left out): a row is left out when any of its user turns is a gate prompt."""
    gate = {prompt_key(r["prompt"]) for r in gate_rows}
    kept, left_out = [], []
    for row in rows:
        (left_out if any(prompt_key(t) in gate for t in user_turns(row)) else kept).append(row)
    return kept, left_out


def training_prompt_keys(snapshot_path) -> set[str]:
    """prompt_key of every user turn in a training snapshot (DPO, KTO or SFT rows; .jsonl or .parquet, as
    write_rows writes them, at any size: a team's snapshot outgrows the cap on prompt files). A file that
    cannot be read raises OSError or ValueError."""
    path = Path(snapshot_path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        with path.open(encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines if line.strip()]
    return {prompt_key(t) for record in records if isinstance(record, dict) for t in user_turns(record)}


def canonical_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def write_atomic(path, data: bytes, mode: int | None = None) -> Path:
    """Write `data` so a reader sees the old file or the new one, never half of it: a temp file in the
    same dir, fsync, then one rename. `mode` sets the file's permissions (0o600 for secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_rows(rows: list[dict], path) -> Path:
    """Write training rows to .jsonl or .parquet atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{path}: output must end in .jsonl or .parquet")
    if not rows:
        raise ValueError("no rows to write: label some comparisons first")
    if suffix == ".jsonl":
        return write_atomic(path, canonical_jsonl(rows))
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return write_atomic(path, buffer.getvalue())


def manifest_path(snapshot_path) -> Path:
    """`<snapshot>.manifest.json`: what a training snapshot holds and what was left out of it."""
    snapshot_path = Path(snapshot_path)
    return snapshot_path.with_name(snapshot_path.name + ".manifest.json")


def write_manifest(snapshot_path, data: dict) -> Path:
    """Write the manifest beside a snapshot atomically; returns its path."""
    return write_atomic(manifest_path(snapshot_path), json.dumps(data, indent=1, ensure_ascii=False).encode())


def read_manifest(snapshot_path) -> dict | None:
    """The manifest beside a snapshot, or None when there is none (an export, an older snapshot) or it is unreadable."""
    try:
        data = json.loads(manifest_path(snapshot_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- a text corpus

CORPUS_SUFFIXES = (".txt", ".md", ".markdown")
MAX_CHUNK_CHARS = 2000  # a CPT row: paragraphs joined up to this; packing then cuts max_length-token blocks


class CorpusError(ValueError):
    """A corpus that cannot be used; the one-line message names the file (and line)."""


def corpus_files(path) -> list[Path]:
    """A corpus: one .txt/.md/.jsonl file, or a folder of them (searched recursively, in name order)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*CORPUS_SUFFIXES, ".jsonl"))
    return [path] if path.is_file() else []


def corpus_texts(path, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """The corpus as texts of at most `max_chars`, split on paragraph breaks (a longer paragraph stays whole).
    JSONL lines give their "text"."""
    files = corpus_files(path)
    if not files:
        raise CorpusError(f"no corpus at {path}: give a .txt, .md or .jsonl file, or a folder of them")
    documents = []
    for file in files:
        try:
            raw = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise CorpusError(f"cannot read {file.name}: {type(exc).__name__}: {first}".rstrip(": ")) from exc
        if file.suffix.lower() == ".jsonl":
            for number, line in enumerate(raw.splitlines(), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        raise CorpusError(f"{file.name} line {number}: not JSON") from None
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise CorpusError(f"{file.name} line {number}: needs a \"text\" string")
                    documents.append(row["text"])
        elif file.suffix.lower() in CORPUS_SUFFIXES:
            documents.append(raw)
        else:
            raise CorpusError(f"{file.name}: a corpus file must be .txt, .md or .jsonl")
    chunks = []
    for document in documents:
        current = ""
        for paragraph in (p.strip() for p in document.split("\n\n")):
            if not paragraph:
                continue
            if current and len(current) + len(paragraph) + 2 > max_chars:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            chunks.append(current)
    return chunks


def corpus_sha256(path) -> str:
    """Of a file, or of a corpus folder (its files' names and contents, in order)."""
    digest = hashlib.sha256()
    for file in corpus_files(path) if Path(path).is_dir() else [Path(path)]:
        if Path(path).is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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

    def status(self, state: str, error: str | None = None, checkpoint: str | None = None,
               pid: int | None = None) -> None:
        data = {"state": state, "pid": pid or os.getpid(), "round_id": self.run_id, "error": error,
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
