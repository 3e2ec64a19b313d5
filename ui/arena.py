"""Arena tab: blind side-by-side answers, one vote each, stored as DPO pairs.

The two models are shuffled left/right per comparison and named only after the
vote. A comparison is written once both answers are complete; the vote buttons
unlock only then, and a vote is acknowledged only after its COMMIT returned.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gradio as gr

from evals.checks import names_its_model
from formats import GATE_PROMPTS, leave_out_gate_prompts, load_prompt_file
from labeling.store import StoreWriteError
from models.loading import ModelLoadError
from models.chat import SamplingParams, end_at_last_sentence
from ui.services import (
    busy_as_error, BASE_CHOICE, Services, annotator_of, bind, check_context, counted, check_prompt, for_display, sampling, sampling_controls,
    overlap_share, picker_update, refuse, save_overlap_share, save_team_arena_sampling, session_of, stop,
    STREAM_EVERY_S, team_arena_sampling, user_error,
)

CHOICES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}
SHORTCUTS = {"a": "1", "b": "2", "tie": "3", "both_bad": "4"}

# Keys 1-4 click the vote buttons unless the annotator is typing in a text box.
KEYBOARD_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const tag = (event.target.tagName || '').toLowerCase();
  if (tag === 'textarea' || tag === 'input' || event.ctrlKey || event.metaKey || event.altKey) return;
  const ids = {'1': 'vote-a', '2': 'vote-b', '3': 'vote-tie', '4': 'vote-both_bad'};
  const button = ids[event.key] && document.getElementById(ids[event.key]);
  if (button && !button.disabled) { event.preventDefault(); button.click(); }
});
</script>
"""


def default_pair(services: Services) -> tuple[str, str]:
    """Base vs the promoted candidate; before any promotion, base vs base (two samples).

    An unpromoted checkpoint may have failed its gate, so annotators never see one by default.
    """
    current = services.store.current_candidate()
    if current in services.model_choices():
        return BASE_CHOICE, current
    return BASE_CHOICE, BASE_CHOICE


def pair_note(services: Services) -> str:
    """One line on what the Arena compares right now (names no side, so blinding holds)."""
    model_x, model_y = default_pair(services)
    if model_x == model_y:
        return ("Cold start: no checkpoint is promoted yet, so both answers are samples from the base model. "
                "Picking the better of two samples collects on-policy pairs, the data DPO learns from best.")
    return "Each comparison pits the promoted candidate against the base model, in random order."


def progress_text(services: Services, annotator: str, waiting: int | None = None) -> str:
    """The line above the Arena; `waiting` is the annotator's queue size when the caller has read it."""
    progress = services.store.annotator_progress(annotator)
    waiting = services.store.queue_size(annotator) if waiting is None else waiting
    return (
        f"**{annotator}** · labeled today: **{progress['today']}** · in all: **{progress['total']}**"
        f" · prompts waiting for you in the queue: {waiting}\n\n"
        + pair_note(services)
    )


def run_comparison(services, history, prompt, model_x, model_y, params, annotator, prompt_id=None, session=None):
    """Generate both answers (streaming) in a random order, then store the comparison.

    Yields (answer_a, answer_b, comparison or None); the last yield carries the
    stored comparison dict. A Stop from this session ends it with nothing stored:
    half an answer is not a fair comparison.
    """
    services.take_stop_request(session)  # a Stop pressed before this comparison does not count
    messages = list(history) + [{"role": "user", "content": prompt}]
    models = [model_x, model_y]
    random.shuffle(models)  # blind: the annotator never knows which side is which
    try:
        adapters = [services.adapter_for(m) for m in models]
        given, retrieved = zip(*(services.prepare(m, messages) for m in models))  # passages for "base + retrieval"
        check_context(services.chat, given, params.system_prompt)
    except (ModelLoadError, ValueError) as exc:
        raise user_error(str(exc)) from exc
    texts, complete = ["", ""], []
    with busy_as_error():
        for texts in services.chat.stream(list(given), adapters, params, complete=complete, user=annotator,
                                          every=STREAM_EVERY_S):
            if services.take_stop_request(session):
                return  # leaving the loop closes the stream, which stops decoding at the next token
            yield texts[0], texts[1], None
    comparison = record_comparison(services, messages, models, texts, complete, params, annotator, prompt_id, retrieved)
    yield comparison["answer_a"], comparison["answer_b"], comparison


def record_comparison(services, messages, models, texts, complete, params, annotator, prompt_id, retrieved=None) -> dict:
    """Store a finished comparison; returns the Arena's state for it. The messages are what the annotator saw;
    `retrieved` (per side, as shuffled) names the corpus chunks a "base + retrieval" side was also given."""
    # An answer cut by the token limit ends at its last complete sentence instead, so a chosen
    # answer never teaches stopping mid-sentence; `cut_off` records which sides were cut.
    trimmed = [end_at_last_sentence(text) if not done else (text, False) for text, done in zip(texts, complete)]
    texts = [text for text, _ in trimmed]
    named = [names_its_model(text) for text in texts]  # an answer that says which model wrote it unblinds the vote
    recorded = {**params.to_dict(), "cut_off": [not done for done in complete], "trimmed": [t for _, t in trimmed],
                **({"retrieved": [list(ids) for ids in retrieved]} if retrieved and any(retrieved) else {}),
                **({"names_model": named} if any(named) else {}),
                # how the rows were decoded: int8 weights on narrow steps (models/decode_weights.py) or the model's own
                **({"int8_decode": True} if getattr(services.chat, "int8_decode", False) else {})}
    comparison_id = services.store.add_comparison(
        messages, texts[0], texts[1], models[0], models[1],
        services.fingerprint(models[0]), services.fingerprint(models[1]),
        recorded, annotator, prompt_id=prompt_id,
    )
    return dict(
        id=comparison_id, messages=messages, answer_a=texts[0], answer_b=texts[1],
        model_a=models[0], model_b=models[1], started=time.time(), voted=False, prompt_id=prompt_id, names_model=named,
    )


@dataclass
class Prefetch:
    """An annotator's next queued comparison, generated while they read the last one (at low
    priority in the shared decode loop), and stored only if they go on to it."""

    prompt_id: int
    prompt: str
    models: list[str]  # as shuffled: side A, side B
    params: SamplingParams
    done: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)
    texts: list[str] | None = None
    complete: list[bool] | None = None


def prefetch_next(services, annotator: str) -> Prefetch | None:
    """Start generating `annotator`'s next queued prompt with the default pair and the team's sampling
    (what their Generate would do), unless one is already waiting for them."""
    row = services.store.next_prompt(annotator)
    current = services.prefetched.get(annotator)
    if row is None or (current is not None and current.prompt_id == row["id"] and not current.abandon.is_set()):
        return None
    if current is not None:
        current.abandon.set()
    prompt = row["messages"][-1]["content"]
    models = list(default_pair(services))
    random.shuffle(models)
    job = Prefetch(row["id"], prompt, models, sampling(*team_arena_sampling(services.settings)))
    services.prefetched[annotator] = job
    messages = [{"role": "user", "content": prompt}]

    def work():
        try:
            adapters = [services.adapter_for(m) for m in models]
            complete: list[bool] = []
            for texts in services.chat.stream([messages, messages], adapters, job.params, complete=complete,
                                              user=annotator, background=True, every=STREAM_EVERY_S):
                if job.abandon.is_set():
                    return  # leaving the loop stops these rows
            job.texts, job.complete = texts, complete
        except Exception:  # noqa: BLE001 (a failed prefetch only means Generate decodes as usual)
            job.abandon.set()
        finally:
            job.done.set()

    threading.Thread(target=work, name=f"prefetch-{annotator}", daemon=True).start()
    return job


def take_prefetched(services, annotator: str, prompt_id, prompt: str) -> Prefetch | None:
    """The finished prefetch for exactly this queued prompt and today's default pair, or None."""
    job = services.prefetched.get(annotator)
    if job is None or job.prompt_id != prompt_id or job.prompt != prompt:
        return None
    if not job.done.is_set() or job.texts is None or sorted(job.models) != sorted(default_pair(services)):
        return None  # still decoding (Generate goes ahead at full priority) or the pair changed since
    services.prefetched.pop(annotator, None)
    return job


def vote_buttons(interactive: bool):
    return [gr.update(interactive=interactive) for _ in CHOICES]


def start(services, prompt, state, keep_going, model_x, model_y, *sampling_args, request: gr.Request = None):
    """UI handler: generate a new comparison. Outputs: state, view A, view B, prompt box, reveal, 4 buttons.

    Only an admin picks the models and the sampling; for everyone else the server uses the
    default pair and a fresh seed, whatever the page sent, so nobody can unblind a comparison."""
    annotator = services.require(request, "annotator")
    try:
        prompt = check_prompt(prompt)
    except ValueError as exc:
        yield refuse(str(exc), 5 + len(CHOICES))
        return
    admin = services.role_of(request) == "admin"
    if not admin:
        model_x, model_y = default_pair(services)
        sampling_args = team_arena_sampling(services.settings)  # the admin's settings, a fresh seed
    elif not model_x or not model_y:  # an admin who generates before the pickers have loaded
        default_x, default_y = default_pair(services)
        model_x, model_y = model_x or default_x, model_y or default_y
    history = []
    if keep_going and state and state.get("voted"):
        history = state["messages"] + [{"role": "assistant", "content": state["continue_with"]}]
    params = sampling(*sampling_args)
    if admin:  # what an admin generates with becomes what every annotator gets (their seed stays fresh)
        save_team_arena_sampling(services.settings, params)
    prompt_id = state.get("queued_prompt_id") if state and state.get("queued_prompt") == prompt else None
    shown = for_display(history + [{"role": "user", "content": prompt}])
    ready = None if admin or history or prompt_id is None else take_prefetched(services, annotator, prompt_id, prompt)
    if ready is not None:  # generated while the annotator read the last one: it appears at once
        comparison = record_comparison(services, [{"role": "user", "content": prompt}], ready.models, ready.texts,
                                       ready.complete, ready.params, annotator, prompt_id)
        view_a = shown + for_display([{"role": "assistant", "content": comparison["answer_a"]}])
        view_b = shown + for_display([{"role": "assistant", "content": comparison["answer_b"]}])
        yield comparison, view_a, view_b, "", ready_to_vote(comparison), *vote_buttons(True)
        return
    yield None, shown, shown, "", "Generating both answers…", *vote_buttons(False)
    view_a = view_b = shown
    comparison = None
    for answer_a, answer_b, comparison in run_comparison(
        services, history, prompt, model_x, model_y, params, annotator, prompt_id, session_of(request)
    ):
        view_a = shown + for_display([{"role": "assistant", "content": answer_a}])
        view_b = shown + for_display([{"role": "assistant", "content": answer_b}])
        if comparison is None:
            yield None, view_a, view_b, "", "Generating both answers…", *vote_buttons(False)
    if comparison is None:  # stopped: give the prompt back so it can be edited and sent again
        yield None, view_a, view_b, prompt, "Stopped: nothing was recorded.", *vote_buttons(False)
        return
    yield comparison, view_a, view_b, "", ready_to_vote(comparison), *vote_buttons(True)


def ready_to_vote(comparison: dict, ready: str = "Both answers are complete") -> str:
    """The line under a finished comparison; it says so when the two answers are the same text, which
    short answers from two samples of one model often are, so nobody hunts for a difference."""
    if comparison["answer_a"].strip() == comparison["answer_b"].strip():
        return f"{ready}, and they are **identical**: vote *Tie* [3], or *Both bad* [4] if neither is good."
    return f"{ready}: vote with the buttons or keys 1–4."


def take_queued(services, request: gr.Request = None):
    """The next queued task: a comparison someone else labeled, from the double-labeled share (its answers
    appear at once, to vote on: agreement is measured on the same answers), else the next queued prompt
    this annotator has not labeled, in the prompt box. Outputs: prompt, state, view A, view B, reveal, 4 buttons."""
    annotator = services.require(request, "annotator")
    unchanged = [gr.skip()] * (3 + len(CHOICES))
    shared = services.store.next_second_label(annotator, overlap_share(services.settings))
    if shared is not None:
        shown = for_display(shared["messages"])
        comparison = dict(id=shared["id"], messages=shared["messages"], answer_a=shared["answer_a"],
                          answer_b=shared["answer_b"], model_a=shared["model_a"], model_b=shared["model_b"],
                          started=time.time(), voted=False, prompt_id=shared["prompt_id"],
                          names_model=shared["params"].get("names_model"))
        return ("", comparison, shown + for_display([{"role": "assistant", "content": shared["answer_a"]}]),
                shown + for_display([{"role": "assistant", "content": shared["answer_b"]}]),
                ready_to_vote(comparison, "Both answers are ready"), *vote_buttons(True))
    row = services.store.next_prompt(annotator)
    if row is None:
        gr.Info("The prompt queue is empty for you: type your own prompt, or "
                + ("import a prompt file under “Models compared (admins)” below (the app ships MT-bench's "
                   "questions: evals/prompts/mt_bench_questions.jsonl)." if services.role_of(request) == "admin"
                   else "ask an admin to import prompts."))
        return gr.skip(), {}, *unchanged
    text = row["messages"][-1]["content"] if row.get("messages") else row.get("prompt", "")
    return text, {"queued_prompt": text, "queued_prompt_id": row["id"]}, *unchanged


def set_overlap(services, percent, request: gr.Request = None) -> str:
    services.require(request, "admin")
    if percent is None or not 0 <= float(percent) <= 100:
        raise user_error("The double-labeled share is a percentage from 0 to 100.")
    save_overlap_share(services.settings, float(percent) / 100)
    return f"{float(percent):.0f}% of queued prompts will be labeled by two annotators."


def overlap_for(services, request: gr.Request = None):
    return gr.skip() if services.role_of(request) != "admin" else round(overlap_share(services.settings) * 100)


def vote(services, choice, state, better_answer, request: gr.Request = None):
    """UI handler for the four buttons. Outputs: state, reveal, progress, better box, 4 buttons.
    It runs off gradio's queue, where neither gr.Warning nor gr.Error reaches a toast, so every
    refusal is said in the reveal line."""
    unchanged = (gr.skip(),) * (2 + len(CHOICES))
    if not state or not state.get("id"):
        return state, "⚠️ There is nothing to vote on yet: generate a comparison first.", *unchanged
    try:
        annotator = services.require(request, "annotator")
    except gr.Error as exc:
        return state, f"⚠️ **Vote not saved**: {exc.message}", *unchanged
    better = (better_answer or "").strip() or None
    try:
        result = services.store.record_vote(
            state["id"], annotator, choice, better_answer=better,
            idempotency_key=f"{state['id']}:{annotator}", time_spent_s=time.time() - state["started"],
        )
    except (ValueError, StoreWriteError) as exc:
        # Not saved, so not acknowledged: the buttons come back (the browser locked them on click)
        # and the written answer stays, so voting again is one click.
        return (state, f"⚠️ **Vote not saved**: {exc}. Nothing was recorded; vote again.",
                progress_text(services, annotator), better_answer, *vote_buttons(True))
    if services.role_of(request) != "admin" and state.get("prompt_id") is not None:
        prefetch_next(services, annotator)  # their next queued comparison, while they read this one
    choice = result.choice  # a replay keeps the first vote: show and continue with what is stored
    chosen = {"a": state["answer_a"], "b": state["answer_b"]}.get(choice, state["answer_a"])
    state = {**state, "voted": True, "continue_with": better or chosen}
    saved = "Vote saved" if result.created else "Already recorded (one vote per comparison)"
    waiting = services.store.queue_size(annotator)
    next_step = (f" Next: *Next queued prompt* ({waiting} waiting for you), a prompt of your own, or tick "
                 "*Continue this conversation* to follow up." if waiting else
                 " Type a new prompt, or tick *Continue this conversation* to follow up.")
    reveal = (
        f"✅ {saved}: **{CHOICES[choice]}**. A was `{state['model_a']}`, B was `{state['model_b']}`."
        + next_step
    ) + unblinded_note(state.get("names_model"))
    return state, reveal, progress_text(services, annotator, waiting), "", *vote_buttons(False)


def unblinded_note(named) -> str:
    """Said after the vote (before it, it would point at a side): which answer named its model."""
    sides = [f"{side} (“{phrase}”)" for side, phrase in zip("AB", named or ()) if phrase]
    if not sides:
        return ""
    return (f"\n\n⚠️ Answer {' and '.join(sides)} named the model behind it, so this vote may not have been blind. "
            "It is marked: the data lint lists it, and a reviewer can exclude it.")


def undo(services, state, request: gr.Request = None):
    """UI handler: take back this annotator's vote on the comparison shown (within 5 minutes), so it
    can be cast again. Outputs: state, reveal, progress, 4 buttons. Off gradio's queue, as `vote`:
    a refusal is said in the reveal line, and the rest of the page stays as it was."""
    unchanged = (gr.skip(),) * (1 + len(CHOICES))
    if not state or not state.get("voted"):
        return state, "⚠️ There is no vote of yours on this comparison to undo.", *unchanged
    try:
        annotator = services.require(request, "annotator")
        services.store.undo_vote(state["id"], annotator)
    except (gr.Error, ValueError, StoreWriteError) as exc:
        return state, f"⚠️ **Not undone**: {getattr(exc, 'message', exc)}", *unchanged
    state = {key: value for key, value in state.items() if key != "continue_with"} | {"voted": False}
    return (state, "↩️ Vote undone: nothing is recorded for this comparison now. Vote again.",
            progress_text(services, annotator), *vote_buttons(True))


def import_prompts(services, upload, request: gr.Request = None):
    """Admins load a JSONL / CSV / MT-bench prompt file into the queue."""
    services.require(request, "admin")
    if upload is None:
        raise user_error("Choose a .jsonl or .csv file first.")
    path = getattr(upload, "name", upload)
    gate_file = services.settings.eval_prompts or GATE_PROMPTS
    try:
        rows, gated = leave_out_gate_prompts(load_prompt_file(path), load_prompt_file(gate_file))
        added = services.store.import_prompts(rows, source=Path(path).name)
    except (ValueError, OSError) as exc:
        raise user_error(f"Could not import {Path(path).name}: {exc}") from exc
    them = "it" if len(gated) == 1 else "them"
    gr.Info(f"Imported {added} new prompts ({len(rows) - added} were already queued)."
            + (f" {counted(len(gated), 'prompt')} left out: the promotion gate evaluates every round on {them} "
               f"({gate_file.name}), and a round trained on {them} would be judged on questions it has seen."
               if gated else ""),
            duration=30 if gated else 10)  # a longer message: time to read it, not a note that never leaves
    return progress_text(services, annotator_of(request))


def refresh_models(services, model_x, model_y, request: gr.Request = None):
    """New checkpoints show up without a restart; an unset side follows the current candidate.
    Only admins get the list: the names of the models compared would unblind an annotator."""
    if services.role_of(request) != "admin":
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None)
    choices = services.model_choices()
    base, candidate = default_pair(services)
    x = model_x if model_x in choices else base
    y = model_y if model_y in choices and model_y != BASE_CHOICE else candidate
    return picker_update(choices, model_x, x), picker_update(choices, model_y, y)


def team_sampling_for(services, request: gr.Request = None):
    """On page load: an admin's Arena controls show the team's saved settings (not the slider
    defaults, which generating would then save over); nobody else gets anything."""
    if services.role_of(request) != "admin":
        return [gr.skip()] * 4
    temperature, top_p, max_new_tokens, _, system_prompt = team_arena_sampling(services.settings)
    return temperature, top_p, max_new_tokens, system_prompt


def guidelines_markdown(services) -> str:
    """The labeling guidelines in force, as annotators read them beside the Arena."""
    current = services.store.guidelines()
    if current is None or not current["text"]:
        return "_No labeling guidelines yet: an admin writes them in the Arena's admin panel._"
    return (f"{current['text']}\n\n<small>Version `{current['version']}`, edited by {current['edited_by']} on "
            f"{current['created_at']:%Y-%m-%d %H:%M} UTC; every vote records the version in force.</small>")


def guidelines_text(services) -> str:
    current = services.store.guidelines()
    return current["text"] if current else ""


def guidelines_for_admin(services, request: gr.Request = None) -> str:
    """The editor's text when an admin opens the panel: the guidelines in force."""
    services.require(request, "admin")
    return guidelines_text(services)


def save_guidelines(services, text, request: gr.Request = None):
    """Admins: make `text` (Markdown) the guidelines; later votes record its version. Outputs: view, note."""
    editor = services.require(request, "admin")
    try:
        version = services.store.save_guidelines(text or "", editor)
    except (ValueError, StoreWriteError) as exc:
        raise user_error(f"Guidelines not saved: {exc}") from exc
    return guidelines_markdown(services), f"Saved: version `{version}` is in force for every vote from now on."


def copy_answer(state, side):
    return (state or {}).get(f"answer_{side}", "")


API_MAX_NEW_TOKENS = 1024  # the Chat tab's slider tops out here too


def api_generate(services: Services, prompt: str, request: gr.Request = None,
                 max_new_tokens: int = 256) -> tuple[str, str, str]:
    """/arena_generate: prompt -> (comparison_id, answer_a, answer_b), default model pair, sampled as every
    annotator's comparison is (the team's temperature, top-p and system prompt; a fresh seed), so the
    API's comparisons and the page's are drawn alike; the length is the caller's."""
    services.require(request, "annotator")
    prompt = check_prompt(prompt)
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= API_MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be an integer from 1 to {API_MAX_NEW_TOKENS}")
    model_x, model_y = default_pair(services)
    temperature, top_p, _, seed, system_prompt = team_arena_sampling(services.settings)
    params = sampling(temperature, top_p, max_new_tokens, seed, system_prompt)
    comparison = None
    for answer_a, answer_b, comparison in run_comparison(
        services, [], prompt, model_x, model_y, params, annotator_of(request)
    ):
        pass
    return comparison["id"], comparison["answer_a"], comparison["answer_b"]


def api_vote(services: Services, comparison_id: str, choice: str, better_answer: str = "",
             request: gr.Request = None) -> str:
    """/arena_vote: (comparison_id, a|b|tie|both_bad, optional better answer) -> status."""
    annotator = services.require(request, "annotator")
    result = services.store.record_vote(
        comparison_id, annotator, choice, better_answer=(better_answer or "").strip() or None,
        idempotency_key=f"{comparison_id}:{annotator}",
    )
    return f"{'saved' if result.created else 'already recorded'}: vote {result.vote_id} ({result.choice})"


def api_undo(services: Services, comparison_id: str, request: gr.Request = None) -> str:
    """/arena_undo: comparison_id -> status; only the caller's own vote, within 5 minutes of casting it."""
    vote_id = services.store.undo_vote(comparison_id, services.require(request, "annotator"))
    return f"undone: vote {vote_id}"


def arena_tab(services: Services) -> None:
    state = gr.State({})
    progress = gr.Markdown(elem_id="arena-progress")
    with gr.Accordion("Labeling guidelines (read these before voting)", open=False, elem_id="arena-guidelines"):
        guidelines = gr.Markdown(lambda: guidelines_markdown(services), elem_id="arena-guidelines-text")  # per load
    with gr.Row():
        prompt = gr.Textbox(placeholder="Type a prompt, or take the next one from the queue", show_label=False,
                            scale=6, lines=2, elem_id="arena-prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="arena-generate")
            stop_button = gr.Button("■ Stop", size="sm", elem_id="arena-stop")
            queued = gr.Button("Next queued prompt", size="sm", elem_id="arena-next")
    keep_going = gr.Checkbox(label="Continue this conversation (the chosen answer becomes history)", value=False)
    with gr.Row():
        # copy per message only: sharing a blind comparison, or copying both sides at once, has no place here
        chat_options = dict(height=380, allow_tags=False, sanitize_html=True, buttons=["copy"])
        view_a = gr.Chatbot(label="Model A", elem_id="arena-a", **chat_options)
        view_b = gr.Chatbot(label="Model B", elem_id="arena-b", **chat_options)
    with gr.Row():
        buttons = [
            gr.Button(f"{label} [{SHORTCUTS[key]}]", interactive=False, elem_id=f"vote-{key}",
                      variant="primary" if key in ("a", "b") else "secondary")
            for key, label in CHOICES.items()
        ]
    with gr.Row():
        reveal = gr.Markdown(elem_id="arena-reveal")
        undo_button = gr.Button("Undo my last vote", size="sm", scale=0, min_width=160, elem_id="arena-undo")
    with gr.Accordion("Write a better answer (optional, saved with your vote)", open=False):
        better = gr.Textbox(lines=5, show_label=False, max_length=20000, elem_id="arena-better",
                            placeholder="Start from A or B, edit it, then vote for the side you started from")
        with gr.Row():
            from_a = gr.Button("Start from A", size="sm")
            from_b = gr.Button("Start from B", size="sm")
    # Hidden from non-admins on load, and filled per request: the page's static config reaches every
    # user, so it must not carry a model name (refresh_models fills the pickers for admins only).
    with gr.Accordion("Models compared (admins)", open=False, elem_id="arena-admin") as admin_panel:
        with gr.Row():
            model_x = gr.Dropdown([], value=None, label="Model 1")
            model_y = gr.Dropdown([], value=None, label="Model 2")
        controls = sampling_controls(seed=-1, prefix="arena")  # -1: a random seed per comparison, recorded with it
        gr.Markdown("The sampling above becomes every annotator's when you next press *Generate* here "
                    "(their seed stays random), and stays until an admin generates with other settings.",
                    elem_id="arena-sampling-note")
        with gr.Row():
            prompt_file = gr.File(label="Prompt file (.jsonl with prompt or MT-bench turns, or .csv)",
                                  file_types=[".jsonl", ".json", ".csv"], scale=3)
            import_button = gr.Button("Import prompts into the queue", scale=1, elem_id="arena-import")
        with gr.Row():
            overlap = gr.Slider(0, 100, value=10, step=5, scale=3, elem_id="arena-overlap",
                                label="Share of queued prompts labeled by two annotators (%), for agreement")
            overlap_note = gr.Markdown()
        # everyone's page carries the text (annotators read it anyway); only an admin's save is accepted
        # filled when the panel opens, not per page load: a page-load value arriving after an admin began
        # typing replaced the edit, and Save stored an empty text (seen in the identity browser test)
        guidelines_editor = gr.Textbox("", lines=8, max_length=50_000,
                                       label="Labeling guidelines (Markdown), shown to annotators beside the Arena",
                                       elem_id="arena-guidelines-editor")
        with gr.Row():
            save_guidelines_button = gr.Button("Save the guidelines", size="sm", scale=0, min_width=200,
                                               elem_id="arena-guidelines-save")
            guidelines_note = gr.Markdown(elem_id="arena-guidelines-note")

    private = dict(api_visibility="private")
    start_outputs = [state, view_a, view_b, prompt, reveal, *buttons]
    start_inputs = [prompt, state, keep_going, model_x, model_y, *controls]
    generate.click(bind(start, services), start_inputs, start_outputs, concurrency_id="model", **private)
    stop_button.click(bind(stop, services), None, None, **private)  # queued: only queued events know the session
    queued.click(bind(take_queued, services), None, [prompt, state, view_a, view_b, reveal, *buttons], **private)
    overlap.release(bind(set_overlap, services), overlap, overlap_note, **private)
    import_button.click(bind(import_prompts, services), prompt_file, progress, **private)
    save_guidelines_button.click(bind(save_guidelines, services), guidelines_editor, [guidelines, guidelines_note],
                                 **private)
    admin_panel.expand(bind(guidelines_for_admin, services), None, guidelines_editor, **private)
    # Votes and undos are quick and thread-safe (the store serialises its writes), so they skip
    # gradio's queue: the page sends one POST to /gradio_api/run/... and gets the answer in its reply,
    # with no queue round, no worker slot and no message stream (20 votes at once: bench_votes.py).
    # Off the queue a handler's gr.Warning reaches no toast, so these say everything in their outputs.
    quick = dict(private, queue=False)
    for key, button in zip(CHOICES, buttons):
        # Lock all four buttons in the browser first, so a double click cannot send twice;
        # the store's unique keys make a replay harmless anyway.
        button.click(lambda: vote_buttons(False), None, buttons, **quick).then(
            bind(vote, services, key), [state, better], [state, reveal, progress, better, *buttons], **quick
        )
    undo_button.click(bind(undo, services), state, [state, reveal, progress, *buttons], **quick)
    from_a.click(partial(copy_answer, side="a"), state, better, **private)
    from_b.click(partial(copy_answer, side="b"), state, better, **private)

    # gr.api reads the signature's type hints, so wrap rather than pass a partial.
    def arena_generate(prompt: str, max_new_tokens: int = 256, request: gr.Request = None) -> tuple[str, str, str]:
        """Generate a blind comparison for `prompt`: (comparison_id, answer_a, answer_b)."""
        try:
            return api_generate(services, prompt, request, max_new_tokens)
        except (ValueError, ModelLoadError) as exc:
            raise user_error(str(exc)) from exc

    def arena_vote(comparison_id: str, choice: str, better_answer: str = "", request: gr.Request = None) -> str:
        """Vote on a comparison: choice is a, b, tie or both_bad; better_answer is optional."""
        try:
            return api_vote(services, comparison_id, choice, better_answer, request)
        except (ValueError, StoreWriteError) as exc:
            raise user_error(f"not saved: {exc}") from exc

    def arena_undo(comparison_id: str, request: gr.Request = None) -> str:
        """Undo your own vote on a comparison, within 5 minutes of casting it."""
        try:
            return api_undo(services, comparison_id, request)
        except (ValueError, StoreWriteError) as exc:
            raise user_error(f"not undone: {exc}") from exc

    gr.api(arena_generate, api_name="arena_generate", concurrency_id="model")
    # Off the queue, as the page's buttons: a plain POST to /gradio_api/run/arena_vote is answered in its
    # reply; gradio_client still sends them through the queue (it always does) and they still work there.
    gr.api(arena_vote, api_name="arena_vote", queue=False)
    gr.api(arena_undo, api_name="arena_undo", queue=False)
    return progress, admin_panel, model_x, model_y, [controls[0], controls[1], controls[2], controls[4]], overlap
