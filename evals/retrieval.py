"""The retrieval baseline: the base model with the corpus passages nearest the question in its prompt.

Try a prompt, then retrieval, and only then fine-tune. The corpus is the one the Train tab uploads
for continued pre-training (`data/corpus/`, read by formats.corpus_texts). Its chunks are embedded
with the MiniLM encoder the sales-talk check already loads (evals/semantic.py), and searched by
cosine similarity over one NumPy matrix: exact, no index structure, and fast enough at this size
(README: when to move to a real vector store).

On disk, beside the corpus (`data/retrieval/`):
    chunks.jsonl     {"id", "text", "source"} per chunk; the id is the hash of its text, so a comparison
                     that records it can be traced to the passage even after a rebuild; source is the
                     corpus file it came from (the Chat tab shows it beside the passage)
    embeddings.npy   float32 (chunks x 384), L2-normalised, in chunks.jsonl's order
    manifest.json    the corpus hash and the settings it was built with; written last, so a build cut
                     short leaves no manifest and is redone

`index_for` builds lazily: a corpus whose hash matches the manifest is loaded, not re-embedded; a
changed corpus re-embeds only its new chunks; a process keeps the loaded index while the corpus
files' sizes and times stay the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evals import semantic
from formats import CorpusError, corpus_files, corpus_sha256, corpus_texts, write_atomic

TOP_K = 3  # passages put into the prompt: more rarely helps a small model and costs context
CHUNK_CHARS = 800  # about 200 MiniLM tokens: a chunk is embedded whole within its 256-token limit
EMBED_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
FILES = ("chunks.jsonl", "embeddings.npy", "manifest.json")

_lock = threading.Lock()  # one build at a time; the Chat and Arena handlers may ask at once
_loaded: dict = {}  # index folder -> (corpus files' signature, Index): skips hashing the corpus per question


class RetrievalError(ValueError):
    """No usable corpus or index; the one-line message says what to do."""


@dataclass
class Index:
    folder: Path
    chunks: list[dict]  # {"id", "text", "source"}
    vectors: np.ndarray  # (len(chunks), 384), unit rows
    manifest: dict

    def search(self, query: str, k: int = TOP_K) -> list[dict]:
        """The k chunks most similar to `query`, best first, each with its cosine "score"."""
        if not self.chunks or not query.strip():
            return []
        scores = self.vectors @ embed([query])[0]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        return [{**self.chunks[i], "score": float(scores[i])} for i in top[np.argsort(-scores[top])]]


def embed(texts: list[str]) -> np.ndarray:
    try:
        return semantic.embed(texts, max_tokens=EMBED_TOKENS)
    except RuntimeError as exc:  # the encoder's package is missing or not the official weights
        raise RetrievalError(str(exc)) from exc


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_long(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """A paragraph over `max_chars` cut at sentence ends (at spaces for a sentence that long), so each
    chunk is embedded whole and three of them fit in a prompt."""
    pieces, current = [], ""
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            pieces += [current] if current else []
            pieces.append(sentence[:cut])
            current, sentence = "", sentence[cut:].lstrip()
        if current and len(current) + len(sentence) + 1 > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    return pieces + ([current] if current else [])


def chunk_corpus(corpus) -> list[dict]:
    """The corpus's chunks with ids and the file each came from; identical chunks are kept once (the first file's)."""
    corpus = Path(corpus)
    chunks: dict[str, dict] = {}
    try:
        files = corpus_files(corpus)
        if not files:
            corpus_texts(corpus, CHUNK_CHARS)  # raises its "no corpus at" error
        for file in files:  # file by file: chunks never span files, so each knows its source
            source = str(file.relative_to(corpus)) if corpus.is_dir() else file.name
            for text in (piece for t in corpus_texts(file, CHUNK_CHARS) for piece in split_long(t)):
                key = hashlib.sha256(text.encode()).hexdigest()[:16]
                chunks.setdefault(key, {"id": key, "text": text, "source": source})
    except CorpusError as exc:
        raise RetrievalError(f"{exc} (upload one in the Train tab)" if "no corpus" in str(exc) else str(exc)) from exc
    if not chunks:
        raise RetrievalError(f"the corpus at {corpus} holds no text")
    return list(chunks.values())


def settings() -> dict:
    """What an index was built with: a change to any of it means a rebuild."""
    return {"encoder": semantic.MODEL_NAME, "encoder_sha256": semantic.WEIGHTS_SHA256,
            "chunk_chars": CHUNK_CHARS, "embed_tokens": EMBED_TOKENS}


def build(corpus, folder, corpus_hash: str | None = None, previous: Index | None = None) -> Index:
    """Chunk and embed `corpus` into `folder`. Chunks already in `previous` (same text, same id, same
    settings) keep their vectors, so an edit re-embeds only what changed."""
    started = time.perf_counter()
    folder = Path(folder)
    chunks = chunk_corpus(corpus)
    known = {} if previous is None else {c["id"]: row for c, row in zip(previous.chunks, previous.vectors)}
    new = [c["text"] for c in chunks if c["id"] not in known]
    fresh = iter(embed(new)) if new else iter(())
    vectors = np.array([known[c["id"]] if c["id"] in known else next(fresh) for c in chunks],
                       dtype=np.float32).reshape(len(chunks), -1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # until the new one lands, the old files are not an index
    write_atomic(folder / "chunks.jsonl",
                 "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks).encode())
    with open(folder / "embeddings.npy.tmp", "wb") as f:
        np.save(f, vectors)
    (folder / "embeddings.npy.tmp").replace(folder / "embeddings.npy")
    manifest = {"corpus": str(corpus), "corpus_sha256": corpus_hash or corpus_sha256(corpus), **settings(),
                "chunks": len(chunks), "embedded": len(new), "build_s": round(time.perf_counter() - started, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    return Index(folder, chunks, vectors, manifest)


def load(folder) -> Index | None:
    """The index in `folder`, or None when there is none (or it is incomplete)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        chunks = [json.loads(line) for line in (folder / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
        vectors = np.load(folder / "embeddings.npy")
    except (OSError, ValueError):
        return None
    if len(chunks) != len(vectors) or manifest.get("chunks") != len(chunks):
        return None
    return Index(folder, chunks, vectors, manifest)


def _signature(corpus) -> tuple:
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in corpus_files(corpus))


def index_for(corpus, folder) -> Index:
    """The index of `corpus` kept in `folder`: built on first use and again whenever the corpus changed."""
    corpus, folder = Path(corpus), Path(folder)
    with _lock:
        signature = _signature(corpus)
        if not signature:
            raise RetrievalError(f"no corpus at {corpus}: upload .txt, .md or .jsonl files in the Train tab first")
        cached = _loaded.get(folder)
        if cached is not None and cached[0] == signature:
            return cached[1]
        corpus_hash = corpus_sha256(corpus)
        index = load(folder)
        same_settings = index is not None and all(index.manifest.get(k) == v for k, v in settings().items())
        if not same_settings or index.manifest.get("corpus_sha256") != corpus_hash \
                or any("source" not in chunk for chunk in index.chunks):  # built before chunks named their file
            index = build(corpus, folder, corpus_hash, previous=index if same_settings else None)
        _loaded[folder] = (signature, index)
        return index


def open_index(path, folder) -> Index:
    """For `--baseline-retrieval PATH`: a built index folder as it is, or a corpus indexed into `folder`."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        index = load(path)
        if index is None:
            raise RetrievalError(f"{path} holds an incomplete retrieval index: rebuild it from its corpus")
        return index
    return index_for(path, folder)


def augment(messages: list[dict], index: Index, k: int = TOP_K) -> tuple[list[dict], list[str]]:
    """The conversation with the passages nearest its last user message put into that message, and their ids.

    Inside the user turn, not in a system message: models/chat.py drops the shared system prompt from a
    conversation that already starts with one, and the Chat tab prepends each side's own, so a context
    system message would replace the prompt under test; small chat models also heed the user turn more."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return list(messages), []
    hits = index.search(messages[last]["content"], k)
    if not hits:
        return list(messages), []
    # Measured on the embedded 135M model (greedy, 3 made-up facts): "Answer the question using these
    # facts ... Question:" got 3 of 3 answers right; "Use these passages if they help: [1] ..." got 1 of 3,
    # the model describing or reorganising the passages instead of answering.
    facts = "\n".join(f"- {hit['text']}" for hit in hits)
    content = f"Answer the question using these facts.\n\nFacts:\n{facts}\n\nQuestion: {messages[last]['content']}"
    augmented = [*messages[:last], {**messages[last], "content": content}, *messages[last + 1:]]
    return augmented, [hit["id"] for hit in hits]
