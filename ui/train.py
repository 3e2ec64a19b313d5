"""Train tab: check the collected data, start a QLoRA DPO/SFT round, watch it live.

The round runs as a subprocess (pipeline.py) on an immutable snapshot file that
the store writes; this tab reads progress back from the round's progress files on
a timer, so a page refresh loses nothing. The knobs are RoundConfig's own fields
(training/config.py): typed, bounded, and handed to the trainer as the round's recipe.
"""

from __future__ import annotations

import atexit
import functools
import html
import json
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from labeling import pairs
from labeling.lint import CUT_OFF
from training.data import BadInput, corpus_files, corpus_texts, prompt_of
from pipeline import JobBusy
from training.config import (
    DPO_LOSSES, RECIPES_DIR, SFT_LOSSES, RoundConfig, default_recipe, field_type, knob_fields, load_recipe,
)
from ui.services import BASE_CHOICE, Services, bind, counted, progress_bar, user_error

LOSSES = {"dpo": list(DPO_LOSSES), "sft": list(SFT_LOSSES), "cpt": list(SFT_LOSSES)}
MAX_CORPUS_BYTES = 200 * 2**20  # a CPT corpus for a small model; far more would train for days on a CPU


def recipe_names() -> list[str]:
    return sorted(p.stem for p in Path(RECIPES_DIR).glob("*.yaml"))


def corpus_dir(services: Services) -> Path:
    return services.settings.corpus_dir


def corpus_summary(services: Services) -> tuple[str, str | None]:
    """What a CPT round would train on (the uploaded corpus), and why it cannot start."""
    folder = corpus_dir(services)
    try:
        chunks = corpus_texts(folder)
    except BadInput:
        return "No corpus yet.", "upload the domain texts (.txt, .md or .jsonl) for continued pre-training first."
    files = corpus_files(folder)
    summary = (f"**Corpus**: {len(files)} files, {sum(f.stat().st_size for f in files) / 1024:.0f} KiB → "
               f"**{len(chunks)} chunks** (a tenth held out for perplexity before and after).")
    min_rows = recipe_min_rows("cpt")
    return summary, None if len(chunks) >= min_rows else (
        f"{len(chunks)} chunks; a CPT round needs {min_rows}. A chunk is a paragraph group of up to 2000 "
        "characters: upload more text (or more, smaller files), or train from the command line with "
        "--min-pairs lowered.")


def save_corpus(services: Services, uploads, request: gr.Request = None) -> str:
    """The uploaded files become the corpus (data/corpus/), replacing the last one."""
    services.require(request, "admin")
    paths = [Path(getattr(u, "name", u)) for u in (uploads or [])]
    if not paths:
        raise user_error("Choose one or more .txt, .md or .jsonl files.")
    bad = [p.name for p in paths if p.suffix.lower() not in (".txt", ".md", ".markdown", ".jsonl")]
    if bad:
        raise user_error(f"Not a text corpus file: {', '.join(bad)} (use .txt, .md or .jsonl).")
    if sum(p.stat().st_size for p in paths) > MAX_CORPUS_BYTES:
        raise user_error(f"The corpus is over {MAX_CORPUS_BYTES // 2**20} MB.")
    staging = corpus_dir(services).with_name(".corpus-upload")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in paths:
        shutil.copyfile(path, staging / path.name)
    try:
        corpus_texts(staging)  # refuse a file that cannot be read before it replaces a good corpus
    except BadInput as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise user_error(str(exc)) from exc
    shutil.rmtree(corpus_dir(services), ignore_errors=True)
    staging.rename(corpus_dir(services))
    return corpus_summary(services)[0]


def data_summary(services: Services, method: str, include_flagged: bool = False,
                 include_cut_off: bool = False) -> tuple[str, str | None]:
    """Markdown about the data a round would train on, and why a round cannot start (None: it can)."""
    if method == "cpt":
        return corpus_summary(services)
    report = services.store.training_data_report()  # cached until the next write
    rows, excluded = pairs.training_rows(report, method, include_flagged=include_flagged,
                                         include_cut_off=include_cut_off)
    lines = [f"**{counted(report.votes, 'vote')}** → **{counted(report.dpo_rows, 'DPO pair')}**, "
             f"**{counted(report.sft_rows, 'SFT row')}**"]
    conflicts = report.build_report.get("conflicts") or []
    if conflicts:
        lines.append(f"{counted(len(conflicts), 'comparison')} had conflicting votes (resolved by majority).")
    cut = sum(e["code"] in CUT_OFF for e in excluded)
    left_out = (f": {counted(len(excluded), 'comparison')} left out ({len(excluded) - cut} flagged by the data lint, "
                f"{cut} with a cut-off answer; tick the boxes below to include them on purpose)") if excluded else ""
    lines.append(f"A {method.upper()} round would train on **{counted(len(rows), 'row')}**{left_out}.")
    min_rows = recipe_min_rows(method)  # the trainer refuses fewer rows anyway
    reason = None
    if len(rows) < min_rows:
        reason = (f"{counted(len(rows), 'usable ' + method.upper() + ' row')}; a round needs at least {min_rows}. "
                  "Label more in the Arena tab" + (", or include the rows left out." if excluded else "."))
    lines.append(report.lint.to_markdown().split("\n")[0])  # the counts; the rows are in the table below
    return "\n\n".join(lines), reason


def lint_table(services: Services) -> str:
    """Every flagged row with its prompt and answer, shortened; click a cell to read it whole."""
    rows = services.store.training_data_report().lint.to_frame_rows()
    if not rows:
        return "<p>The data lint found nothing to flag.</p>"

    def cell(text: str) -> str:
        text = text or ""
        short = html.escape(text if len(text) <= 90 else text[:90].rstrip() + "…")
        if len(text) <= 90:
            return f"<td>{short}</td>"
        return f"<td><details><summary>{short}</summary><div style='white-space:pre-wrap'>{html.escape(text)}</div></details></td>"

    body = "".join(
        f"<tr><td>{html.escape(r['severity'])}</td><td><code>{html.escape(r['code'])}</code></td>"
        f"<td>{html.escape(r['reason'])}</td>{cell(r['prompt'])}{cell(r['answer'])}"
        f"<td><code>{html.escape(str(r['comparison_id']))}</code></td></tr>" for r in rows)
    # the comparison ids are what a reviewer excludes by (Annotators tab, Review), with a reason
    return ("<p>To settle a row for good, a reviewer excludes its comparison in the Annotators tab (Review).</p>"
            "<table style='width:100%;font-size:0.9em'><thead><tr><th>severity</th><th>check</th><th>why</th>"
            f"<th>prompt</th><th>answer</th><th>comparison</th></tr></thead><tbody>{body}</tbody></table>")


@functools.lru_cache(maxsize=None)
def recipe_min_rows(method: str) -> int:
    """The default recipe's row minimum; recipes ship with the code, so read each once, not every tick."""
    return load_recipe(default_recipe(method)).min_pairs


def why_not_start(services: Services, method: str, include_flagged: bool, include_cut_off: bool):
    """(data summary, why a round cannot start now, None when it can): a running job first, then the data."""
    summary, reason = data_summary(services, method, include_flagged, include_cut_off)
    return summary, services.jobs.busy() or reason


def gate_note(reason: str | None) -> str:
    return "" if reason is None else f"⛔ **Cannot start:** {reason}"


# One call at a time, in the order the pages sent them, for every listener that writes the start gate (the data
# summary, the lint, the Start button and why not): a reply computed from older inputs never lands after a newer
# one (seen under load: the tab select's reply, sent with method dpo, landed after the one for picking cpt). The
# page can still send a call before its previous one is under way: it marks a call as running only after
# gathering its inputs, asynchronously. Each call takes milliseconds, so admins' pages hardly wait on each other.
GATE_IN_ORDER = dict(concurrency_id="train-gate", concurrency_limit=1)


def start_gate(services: Services, method: str, include_flagged: bool = False, include_cut_off: bool = False,
               request: gr.Request = None):
    """The data summary, the lint table, the Start button (enabled only when a round can start) and why not."""
    if services.role_of(request) != "admin":  # the Train tab, data included, is for admins
        return "", "", gr.update(interactive=False), "Training is for admins."
    summary, reason = why_not_start(services, method, include_flagged, include_cut_off)
    return summary, lint_table(services), gr.update(interactive=reason is None), gate_note(reason)


def recipe_values(name: str) -> list:
    """The method, then every knob's value, of a recipe (what the knob components show)."""
    config = load_recipe(name)
    values = [config.method]
    for f in knob_fields():
        value = getattr(config, f.name)
        values.append(gr.update(choices=LOSSES[config.method], value=value) if f.name == "loss_type" else value)
    return values


def round_config(services: Services, recipe: str, method: str, start_from: str | None, *knob_values) -> RoundConfig:
    """The recipe with the admin's edits, checked: ValueError names the field and its bounds."""
    edits = {f.name: knob_value(f, value) for f, value in zip(knob_fields(), knob_values)}
    init_adapter = None
    if start_from and start_from != BASE_CHOICE:
        checkpoint = next((c for c in services.checkpoints() if c.round_id == start_from), None)
        if checkpoint is None:
            raise ValueError(f"Checkpoint {start_from} no longer exists.")
        if checkpoint.full:
            raise ValueError(f"{start_from} is a full fine-tune (a whole model, no adapter to continue): "
                             "start from the base.")
        init_adapter = str(checkpoint.adapter_dir)
    return load_recipe(recipe).with_overrides(
        method=method, base_model=services.settings.base_model, init_adapter=init_adapter, **edits,
    ).validate()


def knob_value(f, value):
    """A component's value as the field's type (gr.Number gives floats; an emptied box gives None)."""
    if value is None or value == "":
        raise ValueError(f"{f.metadata.get('label', f.name)} is empty: enter a value.")
    kind = field_type(f.name)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def start_round(services: Services, recipe, method, start_from, include_flagged, include_cut_off, *knob_values,
                request: gr.Request = None):
    """Write a snapshot (less what the lint leaves out) and launch `python -m training run` on it."""
    services.require(request, "admin")
    _, reason = why_not_start(services, method, include_flagged, include_cut_off)
    if reason:
        raise user_error(reason)
    try:
        config = round_config(services, recipe, method, start_from, *knob_values)
        if method == "cpt":
            job = services.jobs.start_round(config, corpus_dir(services).resolve())
            gr.Info(f"Round {job.round_id} started on the corpus (continued pre-training).")
            return status_and_gate(services, method, include_flagged, include_cut_off)
        snapshot = services.store.training_snapshot(method, services.settings.snapshots_dir,
                                                    include_flagged=include_flagged, include_cut_off=include_cut_off)
        job = services.jobs.start_round(config, snapshot.path)
    except (ValueError, JobBusy) as exc:
        raise user_error(str(exc)) from exc
    left_out = f", {len(snapshot.excluded)} comparisons left out" if snapshot.excluded else ""
    gr.Info(f"Round {job.round_id} started on {snapshot.rows} rows{left_out}.")
    return status_and_gate(services, method, include_flagged, include_cut_off)


EXPORT_KEEP_S = 600  # gradio copies a returned file into its own cache within seconds; ours can go after


@functools.lru_cache(maxsize=1)
def export_dir() -> Path:
    """One temp dir per app process for download copies (the data dir is never served), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="preference-export-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def export_data(services: Services, kind: str, fmt: str, request: gr.Request = None) -> str:
    """Write the export and hand gradio a copy; copies older than EXPORT_KEEP_S are deleted, so
    exporting every day does not fill the temp disk."""
    services.require(request, "admin")
    try:
        snapshot = services.store.write_snapshot(kind, services.settings.snapshots_dir, fmt=fmt)
    except ValueError as exc:  # nothing labeled yet, or a kind or format the store does not know: the admin's to fix
        raise user_error(str(exc)) from None
    folder = export_dir()
    for old in folder.iterdir():
        if old.stat().st_mtime < time.time() - EXPORT_KEEP_S:
            old.unlink(missing_ok=True)
    target = folder / f"{time.time_ns()}-{snapshot.name}"  # unique: two admins may export at once
    shutil.copyfile(snapshot, target)
    return str(target)


CANCEL_SETTLE_S = 10  # how long Cancel waits for the job's watcher, so the status it returns is the final one


def cancel_round(services: Services, method: str, include_flagged: bool, include_cut_off: bool,
                 request: gr.Request = None):
    """Cancel whatever runs (a round or its evals), recorded under the admin's name."""
    admin = services.require(request, "admin")
    job = services.jobs.current
    gr.Info(services.jobs.cancel(by=admin))
    if job is not None:
        job.handled.wait(CANCEL_SETTLE_S)
    return status_and_gate(services, method, include_flagged, include_cut_off)


SERIES = {"loss": "train loss", "eval_loss": "held-out loss", "rewards/margins": "reward margin",
          "eval_rewards/margins": "held-out reward margin", "rewards/accuracies": "reward accuracy"}
SERIES_COLORS = dict(zip(SERIES.values(), ["#f97316", "#2563eb", "#16a34a", "#0d9488", "#9333ea"]))


# A round planned this short gets one tick per step, the steps as labels ("1", "2"; "01", "02" from ten on,
# because the plot orders labels as text): as numbers over a few steps the plot drew ticks at 1.05, 1.10, ...
# A longer round gets a numeric axis over its planned steps, whose ticks are whole steps at any page width.
STEPS_AS_LABELS = 30


def planned_steps(rows: list[dict]) -> int:
    return max([int(r.get("max_steps") or 0) for r in rows] + [int(r.get("step") or 0) for r in rows] + [0])


def metric_frame(rows: list[dict]) -> pd.DataFrame:
    """Long format (step, value, series) for one LinePlot with a colour per series."""
    points = [
        {"step": row["step"], "value": float(row[key]), "series": label}
        for row in rows if row.get("step") is not None
        for key, label in SERIES.items() if isinstance(row.get(key), (int, float))
    ]
    frame = pd.DataFrame(points, columns=["step", "value", "series"]).astype({"step": int, "value": float})
    # one point per step and series: the round's "end" event repeats the last step's loss, and over labels
    # the plot sums the points that share one (a loss of 0.69 drawn as 1.38)
    frame = frame.drop_duplicates(["step", "series"], keep="last").reset_index(drop=True)
    planned = planned_steps(rows)
    if planned <= STEPS_AS_LABELS:
        frame["step"] = frame["step"].map(lambda step: f"{step:0{len(str(planned))}d}").astype(str)
    return frame


def round_status(services: Services):
    """Outputs: progress html, status markdown, metrics plot, log text."""
    job = services.jobs.current
    if job is None:
        return progress_bar(0, 0, "No round started since the app launched."), "", plot_update([]), ""
    rows = services.jobs.metrics(job.round_id)
    steps = [r for r in rows if r.get("step") is not None]
    last = steps[-1] if steps else {}
    step, total = int(last.get("step") or 0), int(last.get("max_steps") or 0)
    if job.kind == "eval":  # the bar follows the eval's prompts, not the round's steps: a cancel shows where it stopped
        step, total = services.jobs.eval_progress(job)
    elapsed = (job.ended or time.time()) - job.started  # a finished job's duration stays put
    if job.running and not total:  # the subprocess has not counted its work yet (as the Evals tab says it)
        what = f"**evals** of `{job.round_id}`" if job.kind == "eval" else f"**training** `{job.round_id}`"
        label = f"{what} started {elapsed:.0f} s ago: loading the model and the data…"
    elif job.running and job.kind == "eval":
        eta = elapsed / step * (total - step) if step else None
        label = (f"**evals** of `{job.round_id}` running · {step}/{total} prompts"
                 + (f" · ETA {eta:.0f} s" if eta is not None else "") + f" · {elapsed:.0f} s elapsed")
    elif job.running:
        eta = last.get("eta_s")
        label = (f"**training** `{job.round_id}` running · step {step}/{total}"
                 + (f" · ETA {eta:.0f} s" if isinstance(eta, (int, float)) else "")
                 + f" · {elapsed:.0f} s elapsed")
    elif services.jobs.was_cancelled(job):
        label = services.jobs.cancellation(job)  # who, when, how far, and what was kept
    elif job.kind == "eval" and job.returncode in (0, 1):  # exit 1 is a verdict (regression), not a crash
        verdict = ("every check passed: promote it in the Evals tab." if job.returncode == 0 else
                   "a regression was flagged: read the report in the Evals tab.")
        label = f"**evals** of `{job.round_id}` finished in {elapsed:.0f} s: {verdict}"
    elif job.returncode == 0:
        label = f"**training** `{job.round_id}` finished in {elapsed:.0f} s; its evals start now."
    else:
        error = services.jobs.progress(job.round_id, job.kind).read_status().get("error") or "see the log below"
        what = "training" if job.kind == "train" else "evals of"
        label = f"⛔ **{what}** `{job.round_id}` failed (exit {job.returncode}): {error}"
    result = round_result(services, job.round_id)
    status = label + (f"\n\n**Round result** `{job.round_id}`: {result}" if result else "")
    # the bar carries no words of its own: the status right under it says the same, once
    return progress_bar(step, total), status, plot_update(rows), services.jobs.log_text(job)


def round_result(services: Services, round_id: str) -> str:
    """A finished round's held-out figures from its round.json ("" before it finished). For CPT the
    held-out perplexity before -> after is the figure that says whether the corpus was learned."""
    checkpoint = next((c for c in services.checkpoints() if c.round_id == round_id), None)
    metrics = (checkpoint.round.get("metrics") or {}) if checkpoint else {}
    parts = []
    perplexity = metrics.get("heldout_perplexity") or {}
    before, after = perplexity.get("before"), perplexity.get("after")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        change = f" ({(after - before) / before:+.0%})" if before else ""
        parts.append(f"held-out perplexity {before:.2f} → {after:.2f}{change}")
    if isinstance(metrics.get("best_eval_loss"), (int, float)):
        parts.append(f"best held-out loss {metrics['best_eval_loss']:.3f} at step {metrics.get('best_step')}"
                     f" of {metrics.get('steps')}")
    if isinstance(metrics.get("heldout_reward_accuracy"), (int, float)):
        parts.append(f"held-out reward accuracy {metrics['heldout_reward_accuracy']:.0%}")
    if isinstance(metrics.get("n_train"), int) and isinstance(metrics.get("n_holdout"), int):
        unit = "block" if checkpoint.round.get("method") == "cpt" else "row"  # CPT packs its chunks into blocks
        parts.append(f"trained on {counted(metrics['n_train'], unit)}, {metrics['n_holdout']} held out")
    dropped = metrics.get("n_dropped_too_long")
    if dropped:  # what the data summary counted but the round could not use
        max_length = (checkpoint.round.get("config") or {}).get("max_length")
        parts.append(f"{counted(dropped, 'row')} left out: the prompt alone fills Max length ({max_length} tokens); "
                     f"raise it to train on {'it' if dropped == 1 else 'them'}")
    return " · ".join(parts)


def plot_update(rows: list[dict]):
    """The live plot, hidden until a round has logged a point (no empty axes before any round). A numeric
    step axis spans the round's planned steps from the start, so the lines grow toward its end."""
    frame = metric_frame(rows)
    # Nothing to show: leave the plot alone. An update every tick, even one that keeps it hidden,
    # made gradio 6.31 re-render the tab and drop a knob value being typed.
    if frame.empty:
        return gr.skip()
    numeric = frame["step"].dtype.kind == "i"
    return gr.update(value=frame, visible=True, x_lim=[0, planned_steps(rows)] if numeric else None)


def status_and_gate(services: Services, method: str, include_flagged: bool = False, include_cut_off: bool = False,
                    request: gr.Request = None):
    """Timer outputs: the round's status, and the Start button, which a running round disables."""
    if services.role_of(request) != "admin":
        return "", "", gr.update(visible=False), "", gr.update(interactive=False), ""
    _, reason = why_not_start(services, method, include_flagged, include_cut_off)
    return (*round_status(services), gr.update(interactive=reason is None), gate_note(reason))


def config_summary(services: Services, recipe: str, method: str, start_from: str | None, include_flagged: bool,
                   include_cut_off: bool, *knob_values, request: gr.Request = None) -> str:
    """What a round would run with, as the server received it: the fields that differ from the recipe,
    or the one field out of bounds. Shown as the admin edits, so nobody starts a round on a surprise."""
    if services.role_of(request) != "admin":
        return ""
    try:
        config = round_config(services, recipe, method, start_from, *knob_values)
    except ValueError as exc:
        return f"⛔ {exc}"
    base = load_recipe(recipe)
    changed = [f"{f.name}: {getattr(config, f.name)}" for f in knob_fields() if getattr(config, f.name) != getattr(base, f.name)]
    line = f"This round: **{recipe}**" + (" with " + ", ".join(f"`{c}`" for c in changed) if changed else " as it is")
    too_long = 0 if config.method == "cpt" else prompts_too_long(services, config.method, config.max_length,
                                                                  include_flagged, include_cut_off)
    if too_long:
        it = "it" if too_long == 1 else "them"
        line += (f"\n\n⚠️ {counted(too_long, config.method.upper() + ' row')} {'has' if too_long == 1 else 'have'} "
                 "a prompt that fills "
                 f"Max length ({config.max_length} tokens) by itself: the round leaves {it} out. Raise Max length "
                 f"to train on {it}.")
    return line


_PROMPT_TOKENS: dict[str, int] = {}  # prompt as JSON -> its tokens; the knobs ask on every edit


def prompts_too_long(services: Services, method: str, max_length: int, include_flagged: bool = False,
                     include_cut_off: bool = False) -> int:
    """How many rows a `method` round would take have a prompt of at least `max_length` tokens, counted
    by the served model (ChatModel.prompt_tokens): the round drops those before it starts
    (training.data.drop_prompts_too_long). 0 under --backend without a local tokenizer."""
    rows, _ = pairs.training_rows(services.store.training_data_report(), method,
                                  include_flagged=bool(include_flagged), include_cut_off=bool(include_cut_off))
    lengths = []
    for row in rows:
        prompt = prompt_of(row)
        key = json.dumps(prompt, ensure_ascii=False)
        if key not in _PROMPT_TOKENS:
            _PROMPT_TOKENS[key] = services.chat.prompt_tokens(prompt)
        lengths.append(_PROMPT_TOKENS[key])
    return sum(length >= max_length for length in lengths)


def knob_component(f, value, method: str):
    """A typed, bounded input for one RoundConfig field (bounds and help from its metadata)."""
    meta, kind = f.metadata, field_type(f.name)
    label = meta.get("label", f.name)
    info = meta.get("help") if meta.get("help", "").lower() != label.lower() else None
    if kind is bool:
        return gr.Checkbox(value=value, label=label, info=info)
    if f.name == "loss_type":  # its help lists every loss of both methods; the dropdown shows this method's
        # allow_custom_value: switching the method swaps this list, and the summary events that fire meanwhile
        # still carry the old method's loss, which gradio refused with an error toast per event;
        # RoundConfig.validate still refuses a loss that does not fit the method when a round starts
        return gr.Dropdown(LOSSES[method], value=value, label=label, min_width=160, elem_id="knob-loss_type",
                           allow_custom_value=True)
    return gr.Number(value=value, label=label, info=info, minimum=meta.get("min"), maximum=meta.get("max"),
                     precision=0 if kind is int else None, min_width=160, elem_id=f"knob-{f.name}")


PAST_COLUMNS = ["round", "state", "result", "error", "log"]


def past_rounds(services: Services, request: gr.Request = None) -> pd.DataFrame:
    services.require(request, "admin")
    rows = [{**run, "result": round_result(services, run["round"])} for run in services.jobs.past_runs()]
    return pd.DataFrame(rows, columns=PAST_COLUMNS)


def train_tab(services: Services):
    gr.Markdown("Train a LoRA adapter on the votes collected so far. The round runs in a separate process; "
                "every finished round is evaluated automatically (Evals tab) before it can be promoted.")
    with gr.Row():
        method = gr.Radio(["dpo", "sft", "cpt"], value="dpo", label="Method (cpt: continued pre-training on a corpus)")
        recipe = gr.Dropdown(recipe_names(), value="dpo_qlora", label="Recipe preset")
        # Not refreshed by events: in gradio 6.31 an update to it re-mounted the tab and reset typed knobs.
        start_from = gr.Dropdown(services.model_choices(), value=BASE_CHOICE, label="Start from (reload for new rounds)")
    data = gr.Markdown(elem_id="train-data")
    with gr.Accordion("Corpus for continued pre-training (cpt)", open=False):
        corpus = gr.File(label="Domain texts: .txt, .md or .jsonl with a \"text\" field (replaces the last corpus)",
                         file_count="multiple", file_types=[".txt", ".md", ".markdown", ".jsonl"],
                         elem_id="train-corpus")
    with gr.Row():
        include_flagged = gr.Checkbox(label="Include rows the data lint flags as errors (canned, empty, sales talk)",
                                      value=False, elem_id="train-include-flagged")
        include_cut_off = gr.Checkbox(label="Include pairs with a cut-off answer", value=False,
                                      elem_id="train-include-cut-off")
        refresh_data = gr.Button("↻ Re-check data", size="sm", scale=0, min_width=140)
    with gr.Accordion("Data lint: every flagged row, with its prompt and answer", open=False):
        lint = gr.HTML(elem_id="train-lint")
    with gr.Accordion("Hyper-parameters (from the recipe; edit freely)", open=False):
        defaults = load_recipe("dpo_qlora")
        with gr.Row():
            knobs = [knob_component(f, getattr(defaults, f.name), defaults.method) for f in knob_fields()]
        summary = gr.Markdown("This round: **dpo_qlora** as it is", elem_id="train-config")
    with gr.Row():
        start = gr.Button("Start round", variant="primary", elem_id="train-start", interactive=False)
        cancel = gr.Button("Cancel", variant="secondary", elem_id="train-cancel")  # not red while nothing runs
    reason = gr.Markdown(elem_id="train-reason")
    progress = gr.HTML(elem_id="train-progress")
    status = gr.Markdown(elem_id="train-status")
    plot = gr.LinePlot(metric_frame([]), x="step", y="value", color="series", color_map=SERIES_COLORS,
                       title="Live metrics: loss, held-out loss, DPO reward margin and accuracy", height=300,
                       visible=False, elem_id="train-plot")
    log = gr.Textbox(label="Log (tail)", lines=12, max_lines=12, autoscroll=True, elem_id="train-log")
    timer = gr.Timer(2.0)
    with gr.Accordion("Past rounds (failed and cancelled ones keep their logs)", open=False):
        history = gr.Dataframe(pd.DataFrame(columns=PAST_COLUMNS), interactive=False, wrap=True,
                               elem_id="train-history")
        refresh_history = gr.Button("↻ Refresh", size="sm")
    with gr.Accordion("Export the labeled data (TRL format; loads with `datasets`)", open=False):
        with gr.Row():
            export_kind = gr.Radio(["dpo", "sft", "kto"], value="dpo", label="Format")
            export_format = gr.Radio(["jsonl", "parquet"], value="jsonl", label="File type")
            export_button = gr.Button("Export", elem_id="export-button")
        export_file = gr.File(label="Download", elem_id="export-file")

    private = dict(api_visibility="private")
    outputs = [progress, status, plot, log]
    gate = [data, lint, start, reason]
    choices = [method, include_flagged, include_cut_off]
    recipe.change(recipe_values, recipe, [method, *knobs], **private)
    # switching method by hand loads that method's recipe (a DPO loss type would be refused for SFT)
    method.input(default_recipe, method, recipe, **private)
    # One listener per output, whatever triggers it: picking cpt changes the method, then the recipe, then every
    # knob, and as a listener per trigger their calls ran side by side and a reply to stale values ("⛔ loss_type
    # for cpt must be one of nll, dft, got 'sigmoid'") could land last. trigger_mode="always_last" has the page
    # send them one after another; one call at a time on the server (GATE_IN_ORDER for the gate, which the page
    # load and tab select in app.py share) answers any that still overlap in the order they were sent.
    gr.on([method.change, include_flagged.change, include_cut_off.change, refresh_data.click],
          bind(start_gate, services), choices, gate, trigger_mode="always_last", **GATE_IN_ORDER, **private)
    config_in_order = dict(concurrency_id="train-config", concurrency_limit=1)
    config_inputs = [recipe, method, start_from, include_flagged, include_cut_off, *knobs]
    gr.on([box.change for box in (recipe, method, include_flagged, include_cut_off, *knobs)],
          bind(config_summary, services), config_inputs, summary, trigger_mode="always_last", **config_in_order,
          **private)

    def config_on(event) -> None:
        """The config line on another trigger too (the tab's select, in app.py): its warning about prompts
        longer than Max length must not wait for the first edit."""
        event(bind(config_summary, services), config_inputs, summary, **config_in_order, **private)
    start.click(bind(start_round, services), [recipe, method, start_from, include_flagged, include_cut_off, *knobs],
                [*outputs, start, reason], **GATE_IN_ORDER, **private)
    cancel.click(bind(cancel_round, services), choices, [*outputs, start, reason], **GATE_IN_ORDER, **private)
    timer.tick(bind(status_and_gate, services), choices, [*outputs, start, reason], **GATE_IN_ORDER, **private)
    refresh_history.click(bind(past_rounds, services), None, history, **private)
    export_button.click(bind(export_data, services), [export_kind, export_format], export_file, **private)
    corpus.upload(bind(save_corpus, services), corpus, data, **private).then(
        bind(start_gate, services), choices, gate, **GATE_IN_ORDER, **private)
    return choices, gate, config_on
