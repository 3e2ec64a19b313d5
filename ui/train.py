"""Train tab: check the collected data, start a QLoRA DPO/SFT round, watch it live.

The round runs as a subprocess (pipeline.py) on an immutable snapshot file that
the store writes; this tab reads progress back from the round's metrics.jsonl on
a timer, so a page refresh loses nothing.
"""

from __future__ import annotations

import html
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import gradio as gr
import pandas as pd

from labeling import pairs
from training.config import RECIPES_DIR, default_recipe, load_recipe
from pipeline import JobBusy
from ui.services import BASE_CHOICE, Services

KNOBS = [  # (RoundConfig field, CLI flag, label)
    ("lora_r", "lora-r", "LoRA rank"),
    ("lora_alpha", "lora-alpha", "LoRA alpha"),
    ("lora_dropout", "lora-dropout", "LoRA dropout"),
    ("target_modules", "target-modules", "Target modules (comma separated)"),
    ("learning_rate", "lr", "Learning rate"),
    ("max_steps", "steps", "Max steps (0 = use epochs)"),
    ("num_epochs", "epochs", "Epochs"),
    ("batch_size", "batch-size", "Batch size"),
    ("max_length", "max-length", "Max length (tokens)"),
    ("beta", "beta", "DPO beta"),
    ("loss_type", "loss-type", "DPO loss type"),
]


def recipe_names() -> list[str]:
    return sorted(p.stem for p in Path(RECIPES_DIR).glob("*.yaml"))


def data_summary(services: Services, method: str) -> tuple[str, bool]:
    """Markdown about the data a round would train on, and whether it is usable."""
    rows = services.store.labeled_rows()
    dpo_rows, report = pairs.build("dpo", rows)
    sft_rows, _ = pairs.build("sft", rows)
    lint = pairs.lint(dpo_rows)
    n = len(dpo_rows) if method == "dpo" else len(sft_rows)
    lines = [f"**{len(rows)} votes** → **{len(dpo_rows)} DPO pairs**, **{len(sft_rows)} SFT rows**"]
    if report.get("conflicts"):
        lines.append(f"{len(report['conflicts'])} comparisons had conflicting votes (resolved by majority).")
    usable = True
    min_rows = load_recipe(default_recipe(method)).min_pairs  # the trainer refuses fewer rows anyway
    if n < min_rows:
        usable = False
        lines.append(f"⛔ **Cannot start a {method.upper()} round:** {n} rows, at least {min_rows} needed. "
                     "Label more in the Arena tab.")
    if method == "dpo" and not lint.ok:
        usable = False
        lines.append("⛔ **Cannot start: the data-quality lint found errors.** Fix or relabel them first.")
    lines.append(lint.to_markdown())
    return "\n\n".join(lines), usable


def recipe_values(name: str) -> list:
    config = load_recipe(name)
    values = []
    for field_name, _, _ in KNOBS:
        value = getattr(config, field_name)
        values.append(",".join(value) if isinstance(value, (list, tuple)) else value)
    return [config.method, *values, config.load_in_4bit]


def start_round(services: Services, recipe, method, start_from, *knob_values):
    """Write a snapshot and launch `python -m training run` on it."""
    *knob_values, use_4bit = knob_values
    summary, usable = data_summary(services, method)
    if not usable:
        raise gr.Error(summary.split("\n\n")[1].replace("⛔ ", "").replace("**", ""))
    snapshot = services.store.write_snapshot(method, services.settings.snapshots_dir, fmt="jsonl")
    options = {"recipe": recipe}
    for (_, flag, _), value in zip(KNOBS, knob_values):
        options[flag] = value
    options["no-4bit"] = not use_4bit
    init_adapter = None
    if start_from and start_from != BASE_CHOICE:
        checkpoint = next((c for c in services.checkpoints() if c.round_id == start_from), None)
        if checkpoint is None:
            raise gr.Error(f"Checkpoint {start_from} no longer exists.")
        init_adapter = checkpoint.adapter_dir
    try:
        job = services.jobs.start_round(method, snapshot, options, init_adapter)
    except JobBusy as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"Round {job.round_id} started on snapshot {snapshot.name}.")
    return round_status(services)


def export_data(services: Services, kind: str, fmt: str) -> str:
    """Write the export and hand gradio a copy in the temp dir (the data dir is never served)."""
    snapshot = services.store.write_snapshot(kind, services.settings.snapshots_dir, fmt=fmt)
    target = Path(tempfile.mkdtemp(prefix="preference-export-")) / snapshot.name
    shutil.copyfile(snapshot, target)
    return str(target)


def cancel_round(services: Services):
    gr.Info(services.jobs.cancel())
    return round_status(services)


def progress_html(done: int, total: int, label: str) -> str:
    percent = 0 if not total else min(100, round(100 * done / total))
    label = html.escape(label.replace("**", "").replace("`", ""))
    return (
        f"<div style='margin:4px 0'>{label}</div>"
        f"<div style='background:#e5e7eb;border-radius:6px;height:14px'>"
        f"<div style='width:{percent}%;background:#f97316;height:14px;border-radius:6px'></div></div>"
    )


SERIES = {"loss": "train loss", "eval_loss": "held-out loss", "rewards/margins": "reward margin",
          "eval_rewards/margins": "held-out reward margin", "rewards/accuracies": "reward accuracy"}
SERIES_COLORS = dict(zip(SERIES.values(), ["#f97316", "#2563eb", "#16a34a", "#0d9488", "#9333ea"]))


def metric_frame(rows: list[dict]) -> pd.DataFrame:
    """Long format (step, value, series) for one LinePlot with a colour per series."""
    wanted = SERIES
    points = [
        {"step": row["step"], "value": float(row[key]), "series": label}
        for row in rows if row.get("step") is not None
        for key, label in wanted.items() if isinstance(row.get(key), (int, float))
    ]
    return pd.DataFrame(points or [{"step": 0, "value": 0.0, "series": "train loss"}])


def round_status(services: Services):
    """Outputs: progress html, status markdown, metrics plot, log text."""
    job = services.jobs.current
    if job is None:
        return progress_html(0, 0, "No round started since the app launched."), "", metric_frame([]), ""
    rows = services.jobs.metrics(job.round_id)
    steps = [r for r in rows if r.get("step") is not None]
    last = steps[-1] if steps else {}
    step, total = int(last.get("step") or 0), int(last.get("max_steps") or 0)
    elapsed = time.time() - job.started
    if job.running and job.kind == "eval":
        step, total = services.jobs.eval_progress(job)
        eta = elapsed / step * (total - step) if step else None
        label = (f"**evals** of `{job.round_id}` running · {step}/{total or '?'} prompts"
                 + (f" · ETA {eta:.0f} s" if eta is not None else "") + f" · {elapsed:.0f} s elapsed")
    elif job.running:
        eta = last.get("eta_s")
        label = (f"**training** `{job.round_id}` running · step {step}/{total or '?'}"
                 + (f" · ETA {eta:.0f} s" if isinstance(eta, (int, float)) else "")
                 + f" · {elapsed:.0f} s elapsed")
    elif job.cancelled:
        label = f"**{job.kind}** `{job.round_id}` cancelled; nothing was written under checkpoints/."
    elif job.returncode == 0:
        label = f"**{job.kind}** `{job.round_id}` finished in {time.time() - job.started:.0f} s."
    else:
        error = services.jobs.status_json(job.round_id).get("error") or "see the log below"
        label = f"⛔ **{job.kind}** `{job.round_id}` failed (exit {job.returncode}): {error}"
    return progress_html(step, total, label), label, metric_frame(rows), services.jobs.log_text(job)


def past_rounds(services: Services) -> pd.DataFrame:
    return pd.DataFrame(services.jobs.past_runs(), columns=["round", "state", "error", "log"])


def train_tab(services: Services):
    gr.Markdown("Train a LoRA adapter on the votes collected so far. The round runs in a separate process; "
                "every finished round is evaluated automatically (Evals tab) before it can be promoted.")
    with gr.Row():
        method = gr.Radio(["dpo", "sft"], value="dpo", label="Method")
        recipe = gr.Dropdown(recipe_names(), value="dpo_qlora", label="Recipe preset")
        start_from = gr.Dropdown(services.model_choices(), value=BASE_CHOICE, label="Start from")
    data = gr.Markdown(elem_id="train-data")
    refresh_data = gr.Button("↻ Re-check data", size="sm")
    with gr.Accordion("Hyper-parameters (from the recipe; edit freely)", open=False):
        defaults = recipe_values("dpo_qlora")
        knobs = []
        with gr.Row():
            for (_, _, label), value in zip(KNOBS, defaults[1:]):
                component = gr.Textbox(value=str(value), label=label, min_width=140)
                knobs.append(component)
        use_4bit = gr.Checkbox(value=defaults[-1], label="Load the base in 4-bit NF4 (QLoRA)")
    with gr.Row():
        start = gr.Button("Start round", variant="primary", elem_id="train-start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
    progress = gr.HTML(elem_id="train-progress")
    status = gr.Markdown(elem_id="train-status")
    plot = gr.LinePlot(metric_frame([]), x="step", y="value", color="series", color_map=SERIES_COLORS,
                       title="Live metrics: loss, held-out loss, DPO reward margin and accuracy", height=300)
    log = gr.Textbox(label="Log (tail)", lines=12, max_lines=12, autoscroll=True, elem_id="train-log")
    timer = gr.Timer(2.0)
    with gr.Accordion("Past rounds (failed and cancelled ones keep their logs)", open=False):
        history = gr.Dataframe(past_rounds(services), interactive=False, wrap=True)
        refresh_history = gr.Button("↻ Refresh", size="sm")
    with gr.Accordion("Export the labeled data (TRL format; loads with `datasets`)", open=False):
        with gr.Row():
            export_kind = gr.Radio(["dpo", "sft", "kto"], value="dpo", label="Format")
            export_format = gr.Radio(["jsonl", "parquet"], value="jsonl", label="File type")
            export_button = gr.Button("Export", elem_id="export-button")
        export_file = gr.File(label="Download", elem_id="export-file")

    private = dict(api_visibility="private")
    outputs = [progress, status, plot, log]
    recipe.change(recipe_values, recipe, [method, *knobs, use_4bit], **private)
    # switching method by hand loads that method's recipe (a DPO loss type would be refused for SFT)
    method.input(default_recipe, method, recipe, **private)
    for trigger in (method.change, refresh_data.click):
        trigger(lambda m: data_summary(services, m)[0], method, data, **private)
    start.click(partial(start_round, services), [recipe, method, start_from, *knobs, use_4bit], outputs, **private)
    cancel.click(partial(cancel_round, services), None, outputs, **private)
    timer.tick(partial(round_status, services), None, outputs, **private)
    refresh_history.click(partial(past_rounds, services), None, history, **private)
    export_button.click(partial(export_data, services), [export_kind, export_format], export_file, **private)
    return data, method, start_from
