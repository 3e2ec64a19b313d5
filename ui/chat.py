"""Chat tab: a reviewer talks to two models side by side, both answers streaming at once.

Both sides decode in one batch over one copy of the base weights (ChatModel.stream
with per-row adapter names), so the pair costs barely more than one answer.
"""

from __future__ import annotations

import html
import time

import gradio as gr

from evals import retrieval
from models.loading import ModelLoadError
from ui.services import (
    annotator_of, busy_as_error, BASE_CHOICE, Services, bind, check_context, check_prompt, for_display, sampling, sampling_controls, session_of, stop,
    picker_update, STREAM_EVERY_S, user_error,
)


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """The conversation a side's model sees: its own system prompt first, when it has one."""
    return [{"role": "system", "content": system_prompt}, *messages] if system_prompt else messages


def split_inputs(inputs: tuple) -> tuple:
    """The Chat tab sends the 5 shared sampling values, then each side's own system prompt."""
    sides = tuple((value or "").strip()[:4000] for value in inputs[5:7]) + ("", "")
    return sampling(*inputs[:5]), sides[:2]


def stream_pair(services: Services, left: list, right: list, model_left: str, model_right: str, params,
                session: str | None = None, user: str = "local", side_prompts: tuple = ("", "")):
    """Append an assistant turn to both histories and yield them as tokens arrive.

    Histories are raw role/content messages (kept in gr.State; the Chatbots show
    escaped copies). The last message of each must be the user's. Yields (left, right, stats, passages):
    passages is the HTML of what a "base + retrieval" side was given, then gr.skip() once it was sent.
    Stop (services.request_stop for this session) ends the answers where they are.
    """
    services.take_stop_request(session)  # a Stop pressed before this turn does not count
    try:
        adapters = [services.adapter_for(model_left), services.adapter_for(model_right)]
        given_left, ids_left = services.prepare(model_left, left)  # ids: the passages "base + retrieval" got
        given_right, ids_right = services.prepare(model_right, right)
        # a side's own system prompt replaces the shared one: "base + a prompt" against a fine-tune
        conversations = [with_system(given_left, side_prompts[0] or params.system_prompt),
                         with_system(given_right, side_prompts[1] or params.system_prompt)]
        check_context(services.chat, conversations, "")
        passages = passages_html(services, [("Left", model_left, ids_left), ("Right", model_right, ids_right)])
    except (ModelLoadError, ValueError) as exc:
        raise user_error(str(exc)) from exc
    left = left + [{"role": "assistant", "content": ""}]
    right = right + [{"role": "assistant", "content": ""}]
    started = time.perf_counter()
    stopped = False
    texts = ["", ""]
    with busy_as_error():
        for texts in services.chat.stream(conversations, adapters, params, user=user, every=STREAM_EVERY_S):
            left[-1] = {"role": "assistant", "content": texts[0]}
            right[-1] = {"role": "assistant", "content": texts[1]}
            if services.take_stop_request(session):
                # leaving the loop closes the stream, which stops decoding at the next token
                stopped = True
                break
            yield left, right, "", passages
            passages = gr.skip()  # sent with the first tokens of the turn, not again with every one
    elapsed = time.perf_counter() - started
    # tokens, not updates: the shared loop coalesces updates when the page falls behind
    tokens = max(len(services.chat.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    stats = f"{tokens} tokens in {elapsed:.1f} s · {tokens / max(elapsed, 1e-6):.1f} tok/s per side"
    yield left, right, ("stopped · " if stopped else "") + stats, passages


# ---------------------------------------------------------------- the passages "base + retrieval" was given

SNIPPET_CHARS = 300  # a passage's opening in the list; the whole of it one click away


def retrieved_passages(services: Services, ids: list[str]) -> list[dict]:
    """{"source", "text"} of each chunk id, in the order given (best match first)."""
    index = retrieval.index_for(services.settings.corpus_dir, services.settings.data_dir / "retrieval")  # prepare's
    chunks = {chunk["id"]: chunk for chunk in index.chunks}
    missing = {"source": "(no longer in the corpus)", "text": ""}
    return [{key: chunks.get(chunk_id, missing)[key] for key in ("source", "text")} for chunk_id in ids]


def passage_item(passage: dict) -> str:
    text = passage["text"]
    short = html.escape(text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS].rstrip() + "…")
    whole = (f"<details><summary>whole passage</summary><div style='white-space:pre-wrap'>{html.escape(text)}</div>"
             "</details>" if len(text) > SNIPPET_CHARS else "")
    return f"<li><code>{html.escape(passage['source'])}</code>: <span class='passage'>{short}</span>{whole}</li>"


def passages_html(services: Services, sides: list[tuple[str, str, list[str]]]) -> str:
    """What each "base + retrieval" side was given with the question: its passages, source file and text,
    so a reviewer can check the answer against them. Empty when no side retrieved anything."""
    parts = [f"<p><b>{side}</b> ({html.escape(model)}) was given {len(ids)} passage{'s' * (len(ids) != 1)} "
             "with the question, best match first:</p><ol>"
             + "".join(passage_item(p) for p in retrieved_passages(services, ids)) + "</ol>"
             for side, model, ids in sides if ids]
    if not parts:
        return ""
    return ("<details open><summary><b>Retrieved passages</b> for the last answer</summary>"
            + "".join(parts) + "</details>")


def send(services, message, left, right, model_left, model_right, *sampling_args, request: gr.Request = None):
    """Send one user message to both sides.

    Yields (left state, right state, left view, right view, textbox, stats).
    """
    services.require(request, "reviewer")
    try:
        text = check_prompt(message)
    except ValueError as exc:
        raise user_error(str(exc)) from exc
    user = {"role": "user", "content": text}
    left, right = (left or []) + [user], (right or []) + [user]
    yield left, right, for_display(left), for_display(right), "", "generating…", ""  # the last turn's passages go
    params, side_prompts = split_inputs(sampling_args)
    for left, right, stats, passages in stream_pair(services, left, right, model_left, model_right, params,
                                                    session_of(request), annotator_of(request), side_prompts):
        yield left, right, for_display(left), for_display(right), "", stats, passages


def regenerate(services, left, right, model_left, model_right, *sampling_args, request: gr.Request = None):
    """Drop both last answers and answer the last user message again."""
    services.require(request, "reviewer")
    left, right = list(left or []), list(right or [])
    while left and left[-1]["role"] == "assistant":
        left.pop()
    while right and right[-1]["role"] == "assistant":
        right.pop()
    if not left or not right:
        raise user_error("Nothing to regenerate yet: send a message first.")
    params, side_prompts = split_inputs(sampling_args)
    for left, right, stats, passages in stream_pair(services, left, right, model_left, model_right, params,
                                                    session_of(request), annotator_of(request), side_prompts):
        yield left, right, for_display(left), for_display(right), stats, passages


def clear():
    return [], [], [], [], "", ""


def model_note(services: Services, model_left: str, model_right: str, request: gr.Request = None) -> str:
    """Say what a full fine-tune costs before it is loaded: a whole second copy of the weights."""
    if services.role_of(request) == "annotator":  # checkpoint names are for reviewers
        return ""
    notes = []
    for checkpoint in services.checkpoints():
        if checkpoint.full and checkpoint.round_id in (model_left, model_right):
            size = sum(f.stat().st_size for f in checkpoint.weights_dir.glob("*.safetensors")) / 2**20
            notes.append(f"**{checkpoint.round_id}** is a full fine-tune: serving it loads a second copy of the "
                         f"weights ({size:,.0f} MB on disk) beside the base, and its rows decode in their own loop.")
    return "\n\n".join(notes)


def refresh_pickers(services: Services, model_left: str, model_right: str, request: gr.Request = None):
    if services.role_of(request) == "annotator":  # model names are for reviewers: the Arena is blind
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None)
    choices = services.model_choices()
    keep = lambda value, default: picker_update(choices, value, value if value in choices else default)  # noqa: E731
    return keep(model_left, BASE_CHOICE), keep(model_right, choices[1] if len(choices) > 1 else BASE_CHOICE)


def chat_tab(services: Services) -> None:
    with gr.Row():
        # filled per request by refresh_pickers: no checkpoint name in the page every user gets
        model_left = gr.Dropdown([BASE_CHOICE], value=BASE_CHOICE, label="Left model", scale=3,
                                 elem_id="chat-left-model")
        # no value until refresh_pickers: it then defaults to the newest checkpoint (a set value would be kept)
        model_right = gr.Dropdown([BASE_CHOICE], value=None, label="Right model", scale=3, elem_id="chat-right-model")
        refresh = gr.Button("↻ Refresh checkpoints", scale=1, size="sm")
    note = gr.Markdown(elem_id="chat-model-note")
    with gr.Accordion("System prompt per side (compare a prompt with a fine-tune)", open=False):
        with gr.Row():
            system_left = gr.Textbox(label="Left system prompt (replaces the shared one)", lines=2,
                                     max_length=4000, elem_id="chat-left-system")
            system_right = gr.Textbox(label="Right system prompt (replaces the shared one)", lines=2,
                                      max_length=4000, elem_id="chat-right-system")
    with gr.Row():
        chat_options = dict(height=460, allow_tags=False, sanitize_html=True, buttons=["copy"])
        left_view = gr.Chatbot(label="Left", elem_id="chat-left", **chat_options)
        right_view = gr.Chatbot(label="Right", elem_id="chat-right", **chat_options)
    left, right = gr.State([]), gr.State([])  # raw histories; the views are escaped copies
    with gr.Row():
        message = gr.Textbox(
            placeholder="Message both models… (Enter to send)", show_label=False, scale=6, elem_id="chat-input"
        )
        send_button = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
    with gr.Row():
        stop_button = gr.Button("■ Stop", size="sm", elem_id="chat-stop")
        regenerate_button = gr.Button("↻ Regenerate", size="sm", elem_id="chat-regenerate")
        clear_button = gr.Button("Clear", size="sm")
        stats = gr.Markdown(elem_id="chat-stats")
    # what a "base + retrieval" side was given; plain HTML (escaped by passages_html), opened per answer
    passages = gr.HTML(elem_id="chat-passages")
    # -1: a fresh seed per message, so Regenerate samples anew (a fixed seed gave the same answers again)
    controls = sampling_controls(seed=-1)

    inputs = [message, left, right, model_left, model_right, *controls, system_left, system_right]
    options = dict(concurrency_id="model", api_visibility="private")
    views = [left, right, left_view, right_view]
    send_button.click(bind(send, services), inputs, [*views, message, stats, passages], **options)
    message.submit(bind(send, services), inputs, [*views, message, stats, passages], **options)
    regenerate_button.click(
        bind(regenerate, services), [left, right, model_left, model_right, *controls, system_left, system_right],
        [*views, stats, passages], **options
    )
    # Not gradio's `cancels`: a cancelled event left the Send button dead in gradio 6.31. The
    # running turn sees the request at its next token and ends normally, keeping what streamed.
    stop_button.click(bind(stop, services), None, None, api_visibility="private")  # queued: it knows the session
    clear_button.click(clear, None, [*views, stats, passages], api_visibility="private")
    refresh.click(bind(refresh_pickers, services), [model_left, model_right], [model_left, model_right],
                  api_visibility="private")
    for picker in (model_left, model_right):
        picker.change(bind(model_note, services), [model_left, model_right], note, api_visibility="private",
                      queue=False)
    return model_left, model_right
