"""What the tabs share: settings, the long-lived objects (model, store, jobs), who is asking,
sampling controls and input checks. Tabs import this module, never each other."""

from __future__ import annotations

import contextlib
import functools
import html
import inspect
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from evals import retrieval
from models.loading import ModelLoadError
from formats import MAX_PROMPT_CHARS, corpus_files, write_atomic
from labeling.users import at_least
from models.chat import ChatModel, SamplingParams
from models.remote import BackendError
from models.scheduler import SchedulerBusy
from training.registry import Checkpoint, get_checkpoint, list_checkpoints
from ui.settings import Settings
from ui.space import hf_username

BASE_CHOICE = "base"  # the picker's name for the un-adapted base model
RETRIEVAL_CHOICE = "base + retrieval"  # the base with the uploaded corpus's top passages in the prompt
MAX_STOP_REQUESTS = 10_000  # far more browsers than one app serves at once
MAX_CONTEXT_TOKENS = 3072  # keeps one CPU decode step fast; SmolLM2 itself allows 8k
# The page's answers grow at most 20 times a second, not once a token: each update carries both panes
# to the browser, which re-renders their markdown, and more than 20 a second is not seen. A 48-token
# Arena pair is sent in 18 updates instead of 51; the decode loop's throughput is the same either way.
STREAM_EVERY_S = 0.05


@contextlib.contextmanager
def busy_as_error():
    """A user over their share of the shared decode loop, or a --backend server failing an answer, gets a
    clear message, not a traceback."""
    try:
        yield
    except (SchedulerBusy, BackendError) as exc:
        raise user_error(str(exc)) from exc


@dataclass
class Services:
    settings: Settings
    chat: ChatModel
    store: object | None = None  # labeling.store.Store
    jobs: object | None = None  # pipeline.JobManager
    users: Mapping | None = None  # labeling.users.AuthFile (name -> User, read again on change); None: one local admin
    space: object | None = None  # ui.space.SpaceConfig on a Hugging Face Space: HF logins, roles from its variables
    # Browser sessions whose reviewer pressed Stop; the running generation checks it per token.
    stop_requests: set = field(default_factory=set)
    # annotator -> the comparison generated ahead for their next queued prompt (ui/arena.py, Prefetch)
    prefetched: dict = field(default_factory=dict)

    def role_of(self, request: gr.Request | None) -> str:
        """The asking user's role, from the server's own user list (never from anything the client sent)."""
        if self.space is not None:
            return self.space.role_of(request)
        if self.users is None:
            return "admin"  # no --auth-file: the app serves loopback only, to the one person at this machine
        user = self.users.get(getattr(request, "username", None) or "")
        return user.role if user is not None else "annotator"

    def require(self, request: gr.Request | None, role: str) -> str:
        """The asking user's name, or gr.Error when their role does not include `role`."""
        if self.space is not None and hf_username(request) is None:
            raise user_error("Sign in with Hugging Face (the button at the top of the page) to generate, vote or "
                             "change anything: visitors who have not signed in can only look.")
        if self.users is not None and annotator_of(request) not in self.users:
            raise user_error(f"{annotator_of(request)} is no longer in the app's auth file: nothing was changed. "
                             "Ask an admin to add you again.")
        have = self.role_of(request)
        if not at_least(have, role):
            raise user_error(f"This needs the {role} role; {annotator_of(request)} is signed in as {have}.")
        return annotator_of(request)

    def request_stop(self, session: str | None) -> None:
        """Stop this browser session's running generation. A request without a session stops nothing
        (it would otherwise match every caller that has none, such as API clients)."""
        if not session:
            return
        if len(self.stop_requests) >= MAX_STOP_REQUESTS:  # Stops pressed while nothing ran pile up
            self.stop_requests.clear()
        self.stop_requests.add(session)

    def take_stop_request(self, session: str | None) -> bool:
        """True once after Stop was pressed in this session (clears the request)."""
        if session and session in self.stop_requests:
            self.stop_requests.discard(session)
            return True
        return False

    def checkpoints(self) -> list[Checkpoint]:
        return list_checkpoints(self.settings.checkpoints_dir)

    def model_choices(self) -> list[str]:
        """Picker entries: the base, checkpoints newest first, then "base + retrieval" once a corpus is uploaded
        (last, so the Chat tab still opens on the base against the newest checkpoint)."""
        retrieval_choice = [RETRIEVAL_CHOICE] if corpus_files(self.settings.corpus_dir) else []
        return [BASE_CHOICE] + [c.round_id for c in reversed(self.checkpoints())] + retrieval_choice

    def adapter_for(self, choice: str) -> str | None:
        """Make sure the picked checkpoint's adapter is attached; None means the base."""
        if not choice or choice in (BASE_CHOICE, RETRIEVAL_CHOICE):
            return None
        checkpoint = get_checkpoint(self.settings.checkpoints_dir, choice)
        if checkpoint is None:
            raise ModelLoadError(f"checkpoint {choice!r} not found in {self.settings.checkpoints_dir}")
        self.chat.ensure_weights(choice, checkpoint.weights_dir)  # a full fine-tune loads a second model
        return choice

    def prepare(self, choice: str, messages: list[dict]) -> tuple[list[dict], list[str]]:
        """The conversation `choice`'s model is given, and the ids of the corpus chunks put into it
        (only "base + retrieval" gets any; its index is built on first use and when the corpus changed).
        Raises retrieval.RetrievalError, a ValueError, when there is no corpus."""
        if choice != RETRIEVAL_CHOICE:
            return messages, []
        index = retrieval.index_for(self.settings.corpus_dir, self.settings.data_dir / "retrieval")
        return retrieval.augment(messages, index)

    def fingerprint(self, choice: str) -> str | None:
        adapter = self.adapter_for(choice)
        return None if adapter is None else self.chat.fingerprint(adapter)


def check_prompt(text: str | None) -> str:
    """Return the stripped prompt or raise ValueError with a message for the user."""
    text = (text or "").strip()
    if not text:
        raise ValueError("Type a message first: the prompt is empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    return text


def check_context(chat: ChatModel, conversations: list[list[dict]], system_prompt: str) -> None:
    longest = max(chat.prompt_tokens(c, system_prompt) for c in conversations)
    if longest > MAX_CONTEXT_TOKENS:
        raise ValueError(
            f"The conversation is {longest:,} tokens, over the {MAX_CONTEXT_TOKENS:,}-token limit: clear it and start again."
        )


_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.S)


def as_display_text(text: str) -> str:
    """Show raw text literally in a markdown Chatbot: escape HTML outside code spans.

    The Chatbot sanitizes HTML (so a <script> can never run) but would still render
    or drop tags; escaping keeps what the user or model typed visible as typed.
    Code spans and fences are left alone because markdown shows them verbatim.
    A markdown image would make every reader's browser fetch its URL the moment it is shown
    (a tracking pixel in a prompt or an answer), so `![` is escaped and shows as typed;
    links stay links, fetched only when someone clicks them.
    """
    parts = _CODE.split(text)
    return "".join(
        part if index % 2 else html.escape(part, quote=False).replace("![", "!\\[") for index, part in enumerate(parts)
    )


def for_display(history: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": as_display_text(m["content"])} for m in history]


# ---------------------------------------------------------------- who is asking

def picker_update(choices: list, sent, value):
    """A model or checkpoint picker's new choices, and its value only where it differs from the one the request
    carried. A refresh may have been asked for before the user picked (a tab select, a timer tick); a reply that
    set the value it was sent landed after the pick under load and put the old pick back."""
    return gr.update(choices=choices) if value == sent else gr.update(choices=choices, value=value)


def bind(handler, *bound):
    """`handler` with its first arguments filled in (the services, a vote's choice), as a function
    gradio can read. functools.partial hides the signature, so gradio never passed `gr.Request` and
    every user became "local" and every browser the same session. Gradio injects the request only
    into a positional parameter before any `*args`, so the wrapper takes it first and hands it on
    by keyword."""
    signature = inspect.signature(handler)
    rest = list(signature.parameters.values())[len(bound):]
    wants_request = any(p.name == "request" for p in rest)
    if wants_request:
        request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
        rest = [request, *(p for p in rest if p.name != "request")]

    def call(args, kwargs):
        if wants_request:
            kwargs = {**kwargs, "request": args[0]}
            args = args[1:]
        return handler(*bound, *args, **kwargs)

    if inspect.isgeneratorfunction(handler):  # gradio streams only from generator functions
        @functools.wraps(handler)
        def bound_handler(*args, **kwargs):
            yield from call(args, kwargs)
    else:
        @functools.wraps(handler)
        def bound_handler(*args, **kwargs):
            return call(args, kwargs)
    bound_handler.__signature__ = signature.replace(parameters=rest)
    bound_handler.__annotations__ = {"request": gr.Request} if wants_request else {}
    del bound_handler.__wrapped__  # gradio and inspect must read the signature above, not the handler's
    return bound_handler


def counted(n: int, noun: str) -> str:
    """'1 vote', '2 votes': a newcomer's first round starts from single digits."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def inline_html(text: str) -> str:
    """The few markdown marks the job messages use (**bold**, `code`), as escaped HTML."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def progress_bar(done: int, total: int, text: str = "") -> str:
    """A bar `done` of `total` full (empty while the total is unknown), under `text` when there is one:
    the Train tab's round and the Evals tab's eval."""
    percent = 0 if not total else min(100, round(100 * done / total))
    return ((f"<div style='margin:4px 0'>{inline_html(text)}</div>" if text else "")
            + "<div style='background:#e5e7eb;border-radius:6px;height:12px'>"
            f"<div style='width:{percent}%;background:#f97316;height:12px;border-radius:6px'></div></div>")


def described(frame, label: str, when_empty: str):
    """A table's update whose label says why it is empty and what fills it, when it is: headers alone
    read like a fault."""
    return gr.update(value=frame, label=label if len(frame) else when_empty, show_label=True)


def user_error(message: str) -> gr.Error:
    """An error toast for what the user can fix (bad input, a missing choice, a role they lack). Expected,
    not a fault, so gradio prints no traceback into the app's log for it."""
    return gr.Error(message, print_exception=False)


def refuse(message: str, outputs: int) -> tuple:
    """Bad input from the page (an empty prompt, a missing reason): a warning toast, and each of the
    event's `outputs` left as it was. Raising gr.Error instead also marks every output with a red
    "Error" badge that hides its content: an empty prompt hid the pair of answers still on screen."""
    gr.Warning(message)
    return (gr.skip(),) * outputs


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def annotator_of(request: gr.Request | None) -> str:
    """The logged-in user (an --auth-file login, or a Space's HF login); 'local' when there is none."""
    if request is None:
        return "local"
    return getattr(request, "username", None) or hf_username(request) or "local"


def stop(services: Services, request: gr.Request = None) -> None:
    services.request_stop(session_of(request))


# ---------------------------------------------------------------- sampling (Chat and Arena)

ARENA_SAMPLING_DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "system_prompt": ""}


def arena_sampling_file(settings: Settings) -> Path:
    return settings.data_dir / "arena_sampling.json"


def team_arena_sampling(settings: Settings) -> tuple:
    """The sampling every annotator's comparison uses: the last an admin generated with (temperature,
    top-p, length, system prompt), kept across restarts; the seed is always fresh (-1)."""
    try:
        saved = json.loads(arena_sampling_file(settings).read_text())
    except (OSError, ValueError):
        saved = {}
    values = {**ARENA_SAMPLING_DEFAULTS, **{k: v for k, v in saved.items() if k in ARENA_SAMPLING_DEFAULTS}}
    return values["temperature"], values["top_p"], values["max_new_tokens"], -1, values["system_prompt"]


def save_team_arena_sampling(settings: Settings, params: SamplingParams) -> None:
    values = {"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens,
              "system_prompt": params.system_prompt}
    write_atomic(arena_sampling_file(settings), json.dumps(values, indent=1).encode())


DEFAULT_OVERLAP_SHARE = 0.1  # of queued prompts labeled by two annotators: enough for kappa, cheap in labels


def overlap_share(settings: Settings) -> float:
    """The admin's share of queued prompts that a second annotator labels too (data/labeling_settings.json)."""
    try:
        value = json.loads((settings.data_dir / "labeling_settings.json").read_text())["overlap_share"]
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_OVERLAP_SHARE
    return min(1.0, max(0.0, float(value))) if isinstance(value, (int, float)) else DEFAULT_OVERLAP_SHARE


def save_overlap_share(settings: Settings, share: float) -> None:
    write_atomic(settings.data_dir / "labeling_settings.json", json.dumps({"overlap_share": share}).encode())


def sampling(temperature, top_p, max_new_tokens, seed, system_prompt) -> SamplingParams:
    """UI values -> SamplingParams; seed -1 draws a fresh seed (recorded, so still reproducible)."""
    seed = int(seed) if seed is not None and int(seed) >= 0 else random.randrange(2**31)
    return SamplingParams(
        temperature=float(temperature),
        top_p=float(top_p),
        max_new_tokens=int(max_new_tokens),
        seed=int(seed),
        system_prompt=(system_prompt or "").strip(),
    )


def sampling_controls(seed: int = 0, prefix: str = "chat"):
    """Sampling settings for both sides of the Chat tab and the Arena."""
    with gr.Accordion("Sampling settings (apply to both sides)", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id=f"{prefix}-temperature")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            max_new_tokens = gr.Slider(16, 1024, value=256, step=16, label="Max new tokens",
                                       elem_id=f"{prefix}-max-tokens")
            seed = gr.Number(value=seed, precision=0, label="Seed (-1 = random)")
        system_prompt = gr.Textbox(label="System prompt (optional)", lines=2, max_length=4000)
    return [temperature, top_p, max_new_tokens, seed, system_prompt]
