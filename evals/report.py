"""Candidate vs base on one prompt set: generate both sides, run the checks, decide the gate.

`run_eval` loads the base once, attaches the candidate adapter and decodes base
and candidate rows in the same greedy batch (peft's per-row adapter names), so
both sides see identical prompts, padding and settings. `build_report` is the
pure part and takes answers from anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from evals import comparisons, retrieval
from evals.config import (
    DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_THRESHOLDS, Thresholds,
)
from formats import (
    GATE_PROMPTS, PromptFileError, load_prompt_file, load_reference_file, prompt_key, training_prompt_keys,
)

DEFAULT_PROMPTS = GATE_PROMPTS
DEFAULT_CACHE_DIR = Path("data") / "cache" / "models"
CANDIDATE = "candidate"  # adapter name prefix of the checkpoint under test


class EvalInputError(ValueError):
    """A prompts / references file that cannot be used; the message is meant for the user."""


# ---------------------------------------------------------------- input files

def load_prompts(path: Path | str | None = None) -> list[dict]:
    """Rows of {"prompt", "id", "category", "reference"} (formats.load_prompt_file); the bundled set by default."""
    try:
        return load_prompt_file(Path(path) if path else DEFAULT_PROMPTS)
    except PromptFileError as exc:
        raise EvalInputError(str(exc)) from None


def load_references(path: Path | str) -> dict[str, str]:
    """References keyed by question id and by prompt text (formats.load_reference_file)."""
    try:
        return load_reference_file(path)
    except PromptFileError as exc:
        raise EvalInputError(str(exc)) from None


def attach_references(rows: list[dict], refs: dict[str, str]) -> list[dict]:
    return [{**r, "reference": refs.get(r["id"]) or refs.get(r["prompt"]) or r.get("reference")} for r in rows]


def training_data_of(candidate_dir: Path) -> dict:
    """What the candidate trained on, from the round.json beside it and those of the rounds it continued
    (init_adapter): {"keys": prompt_key of every user turn, "snapshots": the files read, "unreadable": why
    a round's data could not be read}. A candidate without a round.json (an adapter from elsewhere) has none."""
    keys, snapshots, unreadable, seen = set(), [], [], set()
    round_file = candidate_dir.parent / "round.json"
    while round_file.is_file() and round_file.resolve() not in seen:
        seen.add(round_file.resolve())
        try:
            info = json.loads(round_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            unreadable.append(f"{round_file}: {exc}")
            break
        snapshot = (info.get("snapshot") or {}).get("path")
        if snapshot and info.get("method") != "cpt":  # a CPT corpus is text, not prompts
            try:
                keys |= training_prompt_keys(snapshot)
                snapshots.append(snapshot)
            except (OSError, ValueError) as exc:  # gone (another machine's path), or not rows of JSON
                unreadable.append(f"{snapshot}: {exc}")
        init = (info.get("init_adapter") or {}).get("path")
        round_file = Path(init).parent / "round.json" if init else Path()
    return {"keys": keys, "snapshots": snapshots, "unreadable": unreadable}


def leave_out_trained(rows: list[dict], trained: dict, whose: str = "the candidate's") -> tuple[list[dict], dict]:
    """(the rows the gate evaluates, what the report says of the rest): a prompt the candidate trained on
    would judge it on a question it has seen, so it is left out of every check."""
    kept = [r for r in rows if prompt_key(r["prompt"]) not in trained["keys"]]
    left_out = [r["id"] for r in rows if prompt_key(r["prompt"]) in trained["keys"]]
    if not kept:
        raise EvalInputError(f"all {len(rows)} eval prompts are in {whose} training data "
                             f"({', '.join(trained['snapshots'])}): evaluate it on prompts it did not train on (--prompts)")
    return kept, {"left_out": left_out, "snapshots": trained["snapshots"], "unreadable": trained["unreadable"]}


# ---------------------------------------------------------------- the report

# Which way is better for each check's figure, to say whether the candidate beats the prompted base.
# length_shift has no better direction: longer is neither better nor worse by itself.
LOWER_IS_BETTER = {"canned_reply", "sales_talk", "repetition", "empty_answers", "refusal_rate"}
HIGHER_IS_BETTER = {"rouge_l"}


def beats(name: str, candidate: float | None, other: float | None) -> bool | None:
    """Whether the candidate's figure is strictly better than `other`'s; None where there is no direction
    or no figure. A tie is not a win: a fine-tune that only matches a prompt did not pay for itself."""
    if candidate is None or other is None or name not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
        return None
    return candidate < other if name in LOWER_IS_BETTER else candidate > other


BASELINES = {"prompted_base": "prompted base", "retrieval_base": "retrieval base"}  # report key -> label


def add_baseline(report: dict, name: str, prompts: list[str], base_answers: list[str], answers: list[str],
                 references: list[str | None] | None, thresholds: Thresholds = DEFAULT_THRESHOLDS, **about) -> dict:
    """Add a baseline column `name` (BASELINES) to every check: the base helped by something cheaper than
    training, measured by the same checks. If it already does what the candidate does, the round did not
    pay. Each check runs again with the baseline's answers in the candidate's place (against the same
    base), and its candidate figure becomes the column; `about` says what the baseline was."""
    other = build_report(prompts, base_answers, answers, references, thresholds)
    wins = {}
    for check_name, check in report["checks"].items():
        check[name] = other["checks"][check_name]["candidate"]
        check[f"beats_{name}"] = wins[check_name] = beats(check_name, check["candidate"], check[name])
    decided = {check_name: won for check_name, won in wins.items() if won is not None}
    ties = sum(1 for check_name, check in report["checks"].items()
               if check_name in decided and check["candidate"] == check[name])
    report[name] = {
        **about,
        "beats": wins,
        "summary": f"the candidate beats the {BASELINES[name]} on {sum(decided.values())} of {len(decided)} checks"
                   + (f" ({ties} tied)" if ties else "")
                   + ("" if "rouge_l" not in decided else
                      f"; ROUGE-L {'beats' if decided['rouge_l'] else 'does not beat'} it"),
        "flagged_against_base": other["flagged"],  # what the gate would say of the baseline itself
    }
    return report


def add_prompted_base(report: dict, prompts: list[str], base_answers: list[str], prompted_answers: list[str],
                      system_prompt: str, references: list[str | None] | None,
                      thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict:
    """The `prompted_base` column: the base with a system prompt (try a prompt before fine-tuning)."""
    return add_baseline(report, "prompted_base", prompts, base_answers, prompted_answers, references, thresholds,
                        system_prompt=system_prompt)


def _figure(value) -> str:
    return "–" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def add_promoted(report: dict, prompts: list[str], promoted_answers: list[str], candidate_answers: list[str],
                 references: list[str | None] | None, thresholds: Thresholds = DEFAULT_THRESHOLDS, **about) -> dict:
    """Compare the candidate with the round it would replace, the current candidate: every check runs again
    with the promoted round's answers in the base's place, so a round that is still better than the base but
    worse than the one before it (quality rose, then fell) is flagged too. It fails the gate like a
    regression against the base; `flagged` keeps naming only the checks against the base. Each check gets
    the promoted round's figure and `flagged_against_promoted`; `about` says which round it was."""
    other = build_report(prompts, promoted_answers, candidate_answers, references, thresholds)
    for name, check in other["checks"].items():
        report["checks"][name]["promoted"] = check["base"]
        report["checks"][name]["flagged_against_promoted"] = check["flagged"]
        check["examples"] = [{("promoted" if key == "base" else key): value for key, value in example.items()}
                             for example in check["examples"]]
    worse = other["flagged"]
    figures = {name: f"{name} ({_figure(check['base'])} → {_figure(check['candidate'])})"
               for name, check in other["checks"].items()}
    report["promoted"] = {
        **about,
        "flagged": worse,
        "checks": other["checks"],
        "summary": (f"worse than it on {', '.join(figures[n] for n in worse)}" if worse else
                    "no check got worse than it" + (f" (changed, not failing: {', '.join(figures[n] for n in other['warnings'])})"
                                                    if other["warnings"] else "")),
    }
    report["regression"] = bool(report["flagged"] or worse)
    return report


def build_report(
    prompts: list[str],
    base_answers: list[str],
    candidate_answers: list[str],
    references: list[str | None] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> dict:
    """Run every check; `regression` is true when any check is flagged.

    `warnings` names checks shown but not failing the gate (a length shift with no quality drop).
    """
    if not (len(prompts) == len(base_answers) == len(candidate_answers)):
        raise ValueError("prompts, base_answers and candidate_answers must have the same length")
    if references is not None and len(references) != len(prompts):
        raise ValueError("references must be None or one (possibly None) per prompt")
    started = time.perf_counter()
    args = (list(prompts), list(base_answers), list(candidate_answers))
    canned = comparisons.canned_reply(*args, t=thresholds)
    rouge = comparisons.rouge_l(*args, references=references, t=thresholds)
    empty = comparisons.empty_answers(*args, t=thresholds)
    # a length shift fails the gate only beside a quality drop (evals/config.py, length_ratio_max)
    drops = [r.name for r in (canned, rouge, empty) if r.flagged]
    results = [
        canned,
        comparisons.sales_talk(*args, t=thresholds),
        comparisons.repetition(*args, t=thresholds),
        rouge,
        comparisons.length_shift(*args, t=thresholds, quality_drops=drops),
        empty,
        comparisons.refusal_rate(*args, t=thresholds),
    ]
    flagged = [r.name for r in results if r.flagged]
    return {
        "regression": bool(flagged),
        "flagged": flagged,
        "warnings": [r.name for r in results if r.warning],
        "checks": {r.name: r.to_dict() for r in results},
        "n_prompts": len(prompts),
        "thresholds": thresholds.to_dict(),
        "timings": {"checks_s": round(time.perf_counter() - started, 3)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def generate_pairs(chat, adapter: str, prompts: list[str], *, batch_size: int, max_new_tokens: int,
                   progress: Callable[[int, int], None] | None = None,
                   base_answers: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Greedy base and `adapter` answers, both sides of a prompt in the same batch.

    With `base_answers` given (cached from an earlier eval of the same base), only
    the candidate rows are decoded: greedy base answers never change.
    """
    from models.chat import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    # Similar lengths batch together, so left padding wastes little compute.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    base = list(base_answers) if base_answers is not None else [""] * len(prompts)
    candidate = [""] * len(prompts)
    sides = [adapter] if base_answers is not None else [None, adapter]
    # `batch_size` prompts make 2 x batch_size rows when both sides decode; with the base
    # cached, take twice the prompts so a batch keeps its width (CPU throughput per token
    # drops by ~40% going from 16 rows to 8: bench/bench_eval.py).
    per_batch = batch_size * 2 // len(sides)
    done = 0
    if progress:
        progress(0, len(prompts))
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        conversations = [[{"role": "user", "content": prompts[i]}] for i in chunk] * len(sides)
        texts = chat.generate(conversations, [side for side in sides for _ in chunk], params)
        for k, i in enumerate(chunk):
            candidate[i] = texts[(len(sides) - 1) * len(chunk) + k].strip()
            if base_answers is None:
                base[i] = texts[k].strip()
        done += len(chunk)
        if progress:
            progress(done, len(prompts))
    return base, candidate


def generate_base(chat, conversations: list[list[dict]], *, batch_size: int, max_new_tokens: int,
                  system_prompt: str = "", progress: Callable[[int, int], None] | None = None,
                  adapter: str | None = None) -> list[str]:
    """Greedy answers to `conversations` of the base (a baseline's) or of one loaded `adapter` (the promoted
    round's), `batch_size` x 2 rows a batch."""
    from models.chat import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, system_prompt=system_prompt)
    size = [sum(len(m["content"]) for m in c) for c in conversations]
    order = sorted(range(len(conversations)), key=size.__getitem__)
    answers = [""] * len(conversations)
    for start in range(0, len(order), batch_size * 2):
        chunk = order[start : start + batch_size * 2]
        texts = chat.generate([conversations[i] for i in chunk], [adapter] * len(chunk), params)
        for i, text in zip(chunk, texts):
            answers[i] = text.strip()
        if progress:
            progress(start + len(chunk), len(conversations))
    return answers


def generate_prompted(chat, prompts: list[str], system_prompt: str, *, batch_size: int,
                      max_new_tokens: int, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy base answers with `system_prompt` (the prompted-base baseline)."""
    return generate_base(chat, [[{"role": "user", "content": p}] for p in prompts], batch_size=batch_size,
                         max_new_tokens=max_new_tokens, system_prompt=system_prompt, progress=progress)


def passes_progress(progress: Callable[[int, int], None] | None, passes: int, n: int):
    """One progress bar over several passes of n prompts (the pairs, then each baseline): pass k reports as
    k * n + done of passes * n, so the bar does not sit at "n/n" while a baseline decodes."""
    if progress is None:
        return lambda k: None
    return lambda k: (lambda done, _total: progress(k * n + done, passes * n))


def generation_dtype(name: str) -> str:
    """The eval's weights dtype: `name`, or for "auto" bf16 where bf16 matmuls are fast (a CUDA GPU with
    bf16, a CPU with oneDNN bf16) and fp32 elsewhere (a CPU without AVX-512 emulates bf16 slowly)."""
    if name != "auto":
        return name
    import torch

    from models import decode_weights

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if decode_weights.cpu_bf16_fast() else "fp32"


def pack_weights(chat) -> None:
    """Generate on this thread from oneDNN-packed copies of the weights (models/decode_weights.py): in bf16
    the same products bit for bit, read faster (bench/bench_eval.py). Where they cannot be packed (a GPU,
    a CPU without oneDNN bf16), or memory cannot hold them beside the app's own, the model's own weights
    serve, as before; the log says when memory was the reason."""
    from models import decode_weights

    for model in [chat.model, *(full.model for full in chat.full.values())]:
        if decode_weights.packing_unsupported(model) is not None:
            continue
        short = decode_weights.memory_short(decode_weights.copy_bytes(model, "packed"), decode_weights.free_memory())
        if short:
            print(f"evals: no packed copies of the weights ({short}); generating from the model's own", flush=True)
            continue
        decode_weights.prepare(model, int8=False, packed=True)


def base_cache_file(cache_dir: Path, base_name: str, prompts: list[str], max_new_tokens: int,
                    dtype: str = DEFAULT_DTYPE) -> Path:
    """Where greedy base answers for this base + prompt set + length + dtype are kept between evals.

    dtype is part of the key: greedy bf16 and fp32 answers drift apart after a few dozen tokens.
    """
    key = hashlib.sha256(json.dumps([base_name, prompts, max_new_tokens, dtype]).encode()).hexdigest()[:16]
    return Path(cache_dir).parent / "eval-base" / f"{key}.json"


def read_base_cache(path: Path, n: int) -> list[str] | None:
    try:
        answers = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return answers if isinstance(answers, list) and len(answers) == n else None


def promoted_answers_on_record(weights_dir: Path, fingerprint: str, base_model: str, max_new_tokens: int,
                               dtype: str) -> dict[str, str]:
    """The promoted round's greedy answers from its own eval report (eval.json beside its weights), by prompt,
    where that report was made on these weights, base, length and dtype: the same answers it would give
    now, so the usual case decodes nothing more. Empty where there is no such report."""
    try:
        record = json.loads((Path(weights_dir).parent / "eval.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    generation = record.get("generation") or {}
    if (record.get("adapter_fingerprint") != fingerprint or record.get("base_model") != base_model
            or generation.get("max_new_tokens") != max_new_tokens or generation.get("dtype") != dtype
            or not generation.get("greedy")):
        return {}
    return {sample["prompt"]: sample["candidate"] for sample in record.get("samples") or []
            if isinstance(sample.get("prompt"), str) and isinstance(sample.get("candidate"), str)}


def run_eval(
    adapter_dir: Path | str,
    prompts_file: Path | str | None = None,
    base_model: str | None = None,
    references_file: Path | str | None = None,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    chat=None,
    use_base_cache: bool = True,
    dtype: str = DEFAULT_DTYPE,
    baseline_system_prompt: str | None = None,
    baseline_retrieval: Path | str | None = None,
    promoted: Path | str | None = None,
) -> dict:
    """Evaluate the adapter at `adapter_dir` (or a full fine-tune's model dir) against its base on a prompt set.

    Raises EvalInputError / models.loading.ModelLoadError (both ValueErrors with
    one-line messages) for bad inputs, before any generation. Pass an already
    loaded `chat` (models.chat.ChatModel) to reuse the app's base model.

    `promoted`: the weights of the current candidate, the round this one would replace; every check is
    also run against its answers (add_promoted), taken from its own eval report where they fit.
    """
    from models.loading import adapter_fingerprint, is_full_model_dir, validate_adapter_dir, validate_model_dir
    from models.chat import ChatModel

    started = time.perf_counter()
    adapter_dir = Path(adapter_dir)
    # fail fast, before loading any weights; a full fine-tune's model dir is a candidate too
    (validate_model_dir if is_full_model_dir(adapter_dir) else validate_adapter_dir)(adapter_dir)
    trained = training_data_of(adapter_dir)
    if promoted is not None:
        promoted = Path(promoted)
        (validate_model_dir if is_full_model_dir(promoted) else validate_adapter_dir)(promoted)
        # a question the promoted round trained on would favour it against this one: left out of every check too
        theirs = training_data_of(promoted)
        trained = {"keys": trained["keys"] | theirs["keys"],
                   "snapshots": list(dict.fromkeys(trained["snapshots"] + theirs["snapshots"])),
                   "unreadable": trained["unreadable"] + theirs["unreadable"]}
    rows = load_prompts(prompts_file)
    if references_file:
        rows = attach_references(rows, load_references(references_file))
    rows, trained_on = leave_out_trained(rows, trained, "the candidate's or the promoted round's" if promoted else
                                         "the candidate's")
    if batch_size < 1 or max_new_tokens < 1:
        raise EvalInputError("batch_size and max_new_tokens must be positive")
    index = None
    if baseline_retrieval:  # an index folder, or a corpus indexed beside the model cache
        try:
            index = retrieval.open_index(baseline_retrieval, Path(cache_dir).parent / "retrieval")
        except retrieval.RetrievalError as exc:
            raise EvalInputError(str(exc)) from None

    if chat is None:
        # a GPU when there is one
        chat = ChatModel.load(base_model, Path(cache_dir), dtype=generation_dtype(dtype), device="auto")
    # A fresh name per content: the app may have an older adapter loaded as "candidate".
    name = f"{CANDIDATE}-{adapter_fingerprint(adapter_dir)}"
    chat.ensure_weights(name, adapter_dir)  # a full model dir is loaded as a second model beside the base
    prompts = [r["prompt"] for r in rows]
    weights_dtype = str(chat.model.dtype).removeprefix("torch.")
    # the promoted round's answers: from its own report where they fit; its weights are loaded only for the rest,
    # and not at all when they are the candidate's own (its answers are then the candidate's)
    promoted_fingerprint = adapter_fingerprint(promoted) if promoted is not None else None
    same_weights = promoted_fingerprint == chat.fingerprint(name)
    promoted_name, on_record, missing = f"promoted-{promoted_fingerprint}", {}, []
    if promoted is not None and not same_weights:
        on_record = promoted_answers_on_record(promoted, promoted_fingerprint, str(base_model or chat.base_name),
                                               max_new_tokens, weights_dtype)
        missing = [p for p in prompts if p not in on_record]
        if missing:
            chat.ensure_weights(promoted_name, promoted)
    pack_weights(chat)
    loaded = time.perf_counter()

    cache_file = base_cache_file(
        Path(cache_dir), str(base_model or chat.base_name), prompts, max_new_tokens, weights_dtype
    )
    cached = read_base_cache(cache_file, len(prompts)) if use_base_cache else None
    passes = passes_progress(progress, 1 + bool(baseline_system_prompt) + bool(index) + bool(missing), len(prompts))
    base, candidate = generate_pairs(
        chat, name, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=passes(0),
        base_answers=cached,
    )
    if use_base_cache and cached is None:
        write_report(base, cache_file)  # atomic JSON write; the next round's eval skips the base half
    prompted = None
    if baseline_system_prompt:
        prompted = generate_prompted(chat, prompts, baseline_system_prompt, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, progress=passes(1))
    retrieved = [retrieval.augment([{"role": "user", "content": p}], index) for p in prompts] if index else None
    if retrieved:
        retrieval_answers = generate_base(chat, [c for c, _ in retrieved], batch_size=batch_size,
                                          max_new_tokens=max_new_tokens,
                                          progress=passes(1 + bool(baseline_system_prompt)))
    if missing:  # one more pass, over the prompts its report did not answer; scaled to a whole pass on the bar
        step = passes(1 + bool(baseline_system_prompt) + bool(index))
        answers = generate_base(chat, [[{"role": "user", "content": p}] for p in missing], batch_size=batch_size,
                                max_new_tokens=max_new_tokens, adapter=promoted_name,
                                progress=lambda done, total: step(done * len(prompts) // total, len(prompts)))
        on_record = {**on_record, **dict(zip(missing, answers))}
    if promoted is not None and same_weights:
        on_record = dict(zip(prompts, candidate))
    generated = time.perf_counter()

    references = [r["reference"] for r in rows]
    references = references if any(references) else None
    report = build_report(prompts, base, candidate, references, thresholds)
    if prompted is not None:
        add_prompted_base(report, prompts, base, prompted, baseline_system_prompt, references, thresholds)
    if retrieved:
        add_baseline(report, "retrieval_base", prompts, base, retrieval_answers, references, thresholds,
                     index=str(index.folder), corpus_sha256=index.manifest.get("corpus_sha256"),
                     chunks=len(index.chunks), k=retrieval.TOP_K)
    if promoted is not None:
        add_promoted(report, prompts, [on_record[p] for p in prompts], candidate, references, thresholds,
                     round_id=promoted.parent.name, weights=str(promoted), adapter_fingerprint=promoted_fingerprint,
                     answers_on_record=0 if same_weights else len(prompts) - len(missing), same_weights=same_weights)
    report["timings"].update(
        load_s=round(loaded - started, 3), generate_s=round(generated - loaded, 3),
        total_s=round(time.perf_counter() - started, 3),
    )
    report.update(
        adapter=str(adapter_dir),
        adapter_fingerprint=chat.fingerprint(name),
        full_fine_tune=name in chat.full,
        base_model=base_model or chat.base_name,
        prompts_file=str(prompts_file or DEFAULT_PROMPTS),
        trained_on=trained_on,  # eval prompts left out because the candidate trained on them
        generation={"greedy": True, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                    "dtype": weights_dtype,
                    "base_answers_cached": cached is not None},
        samples=[
            {"id": r["id"], "prompt": r["prompt"], "base": b, "candidate": c, "reference": r["reference"],
             **({"prompted_base": prompted[i]} if prompted is not None else {}),
             **({"retrieval_base": retrieval_answers[i], "retrieved": retrieved[i][1]} if retrieved else {}),
             **({"promoted": on_record[r["prompt"]]} if promoted is not None else {})}
            for i, (r, b, c) in enumerate(zip(rows, base, candidate))
        ],
    )
    return report


def write_report(report: dict, path: Path | str) -> Path:
    """Write JSON atomically: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    os.replace(tmp, path)
    return path
