"""The preference loop app: chat, label, train and gate, in one Gradio page.

    python app.py [--data-dir DIR] [--base-model M] [--host H] [--port P] [--auth-file F] [--sync-dir DIR]
                  [--backend URL [--backend-model NAME]]
"""

# No `from __future__ import annotations` here: gradio finds the handlers that take the request (who is asking) by
# resolving their `request: gr.Request` with typing.get_type_hints in this module's globals, which hold no `gr`
# (it is imported in build_ui). An annotation evaluated where the handler is defined is the class itself.
import argparse
import gc
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gradio's queue rebuilds a pandas DataFrame of its last 10,000 events after every event, for the
# process-time percentiles of its API page: 1-5 ms of CPU per vote, growing with uptime. Refresh
# those figures every 200 events instead.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "200")

# What a start needs to refuse (bad flags, logins, a second app, a broken DB) imports in a fraction of a second;
# gradio, torch and the tabs take seconds, so build_ui and serve import them, after those checks.
import duckdb  # noqa: E402

from formats import GATE_PROMPTS, write_gate_pointer  # noqa: E402
from labeling import journal  # noqa: E402
from labeling.hub_sync import HubSyncError  # noqa: E402
from labeling.store import DB_NAME, Store, StoreLocked, StoreWriteError  # noqa: E402
from labeling.users import AuthFile  # noqa: E402
from models.loading import EMBEDDED, ModelLoadError, resolve_device  # noqa: E402
from ui.settings import Settings  # noqa: E402
from ui.space import SPACE_HOST, SpaceConfig, fetch_journal, login_button, on_space, start_uploads  # noqa: E402

if TYPE_CHECKING:
    import gradio as gr

    from ui.services import Services

TITLE = "Preference loop"
QUEUE_MAX_SIZE = 256  # waiting events across all users; a labeling team sends a few each
HANDLER_CONCURRENCY = 16  # per event kind; generation handlers sharing concurrency_id "model" count as one kind


def build_ui(settings: Settings, services: "Services") -> "gr.Blocks":
    import gradio as gr

    from ui import annotators, arena, evals, review, train
    from ui.chat import chat_tab, refresh_pickers
    from ui.services import annotator_of, bind

    # delete_cache: gradio's copies of uploads and downloads older than a day go, checked hourly
    with gr.Blocks(title=TITLE, delete_cache=(3600, 86400)) as demo:
        with gr.Row(equal_height=False):
            gr.Markdown(
                f"## {TITLE}\nBase model: `{services.chat.base_name}` · data: `{settings.data_dir}`",
                elem_id="header",
            )
            if services.users is not None:  # logins from --auth-file: a shared computer must be left logged out
                # relative, so it also works behind a proxy's path prefix; only this browser's login ends
                gr.Button("Log out", link="logout?all_session=false", size="sm", elem_id="logout", scale=0,
                          min_width=90)
        login_button(services.space)  # on a Space only
        with gr.Tabs():
            with gr.Tab("Arena", id="arena") as arena_page:
                arena_progress, arena_admin, *arena_models, arena_sampling, arena_overlap = arena.arena_tab(services)
            with gr.Tab("Chat", id="chat") as chat_page:
                chat_models = chat_tab(services)
            with gr.Tab("Train", id="train") as train_page:
                train_choices, train_gate, train_config_on = train.train_tab(services)
            with gr.Tab("Evals", id="evals") as evals_page:
                evals_picker, evals_outputs = evals.evals_tab(services)
            with gr.Tab("Annotators", id="annotators") as annotators_page:
                annotators_outputs = annotators.annotators_tab(services)
                review_outputs = review.review_section(services)  # reviewers exclude votes from training
        # page loads and tab refreshes are quick reads: no concurrency
        # limit, so they never wait for a worker slot behind each other or behind generation
        private = dict(api_visibility="private", concurrency_limit=None)

        def load_progress(request: gr.Request) -> str:
            return arena.progress_text(services, annotator_of(request))

        def pages_for(request: gr.Request):
            """Each role sees its tabs (the handlers check the role again: hiding is not a check).
            Only what must hide is updated; the rest is skipped: in gradio 6.31 any update to a tab,
            even an empty gr.update(), re-mounted it later and threw away values typed into it (a
            Train knob went back to the recipe's), which gr.skip() does not. A tab hides only with
            visible="hidden": visible=False left every tab showing (an annotator saw four blank tabs)."""
            role = services.role_of(request)
            reviewer, admin = role in ("reviewer", "admin"), role == "admin"
            return [gr.skip() if allowed else gr.update(visible="hidden")
                    for allowed in (reviewer, admin, reviewer, admin, reviewer)]

        demo.load(pages_for, None, [chat_page, train_page, evals_page, arena_admin, annotators_page], **private)
        annotators_refresh = bind(annotators.refresh, services)
        annotators_page.select(annotators_refresh, None, annotators_outputs, **private)
        annotators_page.select(bind(review.refresh_review, services), None, review_outputs, **private)
        def arena_on_load(request: gr.Request):
            """The Arena's page-load values in one reply: the team's sampling (admins), the overlap share and
            the progress line. As three load events their replies landed in any order, and a setting changed
            before the sampling's reply arrived was put back; now the progress line shows that it has."""
            return (*arena.team_sampling_for(services, request), arena.overlap_for(services, request),
                    load_progress(request))

        demo.load(arena_on_load, None, [*arena_sampling, arena_overlap, arena_progress], **private)
        # checkpoints finished since the page loaded appear when a tab is opened again
        for event in (demo.load, arena_page.select):
            event(bind(arena.refresh_models, services), arena_models, arena_models, **private)
        for event in (demo.load, chat_page.select):
            event(bind(refresh_pickers, services), chat_models, chat_models, **private)
        # these write what the tabs' own listeners write, so they join the tabs' one-at-a-time queues
        train_refresh, train_in_order = bind(train.start_gate, services), dict(private, **train.GATE_IN_ORDER)
        demo.load(train_refresh, train_choices, train_gate, **train_in_order)
        train_page.select(train_refresh, train_choices, train_gate, **train_in_order)
        train_config_on(train_page.select)
        evals_refresh, evals_in_order = bind(evals.refresh, services), dict(private, **evals.VIEW_IN_ORDER)
        demo.load(evals_refresh, evals_picker, evals_outputs, **evals_in_order)
        evals_page.select(evals_refresh, evals_picker, evals_outputs, **evals_in_order)
    # Generation handlers only feed the shared decode loop (models/scheduler.py), which batches
    # them, so many run at once; page refreshes are short and thread-safe (the store serialises
    # writes itself) and set concurrency_limit=None, so only gradio's thread pool bounds them. Votes
    # and undo skip the queue altogether (queue=False, ui/arena.py). max_size bounds the waiting
    # line: past it a client is told the app is busy instead of piling up work nobody will wait for.
    # status_update_rate: gradio otherwise sends every waiting event a fresh queue position each time
    # any event starts, a message per waiting client per start; once a second is enough to watch a line move.
    # api_open=False: gradio otherwise runs any queued event from a direct POST to /gradio_api/run/...,
    # past its concurrency limit and max_size; now only events declared queue=False take that route.
    demo.queue(default_concurrency_limit=HANDLER_CONCURRENCY, max_size=QUEUE_MAX_SIZE, status_update_rate=1.0,
               api_open=False)
    return demo


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(host: str, users: Mapping | None, space: SpaceConfig | None = None) -> None:
    """Without logins everyone is an admin, so such an app may listen on this machine only.
    A Space has logins: Sign in with Hugging Face (ui/space.py)."""
    if space is not None:
        if users is not None:
            raise ValueError("on a Space the login is Sign in with Hugging Face: drop --auth-file and list admins and "
                             "reviewers in the Space variables PREFERENCE_ADMINS and PREFERENCE_REVIEWERS")
        return
    if users is None and host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"--host {host} serves the network without --auth-file, so anyone who can reach it could "
                         "train, promote and export: add users with `python -m labeling users add --auth-file F` "
                         "and pass --auth-file F, or serve on 127.0.0.1")


def open_store(data_dir: Path, journal_dir: Path | None = None) -> Store:
    """The votes DB, opened before the model loads, so a second app or a broken file fails in seconds."""
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return Store(data_dir, journal_dir=journal_dir)
    except StoreLocked as exc:
        raise ValueError(f"{exc}: another app already serves this data dir; stop it or pass another --data-dir") from None
    except (duckdb.Error, StoreWriteError) as exc:
        raise ValueError(f"cannot open {data_dir / DB_NAME}: {str(exc).splitlines()[0]}; restore it from a backup "
                         "or move it away to start an empty one") from None


def sync_journal(store: Store, journal_dir: Path, space: SpaceConfig | None = None) -> None:
    """An empty DB (new, or lost with a Space's disk) is rebuilt from the journal (on a Space, downloaded
    first from its dataset repo when the disk has none); then the journal gets every row it lacks
    (votes from before it existed), so it alone can rebuild this DB from now on."""
    if space is not None:
        fetch_journal(space, store, journal_dir)
    if store.is_empty() and journal.segments(journal_dir):
        found = store.restore_from_journal(journal_dir)
        print(f"restored {journal.describe(found)} from the journal in {journal_dir}", flush=True)
    added = store.journal_missing()
    if added:
        print(f"journaled {sum(added.values())} existing rows into {journal_dir}", flush=True)


def login_checker(users: Mapping):
    """gradio's `auth` callable: the user exists and the password matches its hash."""
    def check(name: str, password: str) -> bool:
        user = users.get(name)
        return user is not None and user.check(password)

    return check


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="votes DB, snapshots, checkpoints")
    parser.add_argument("--base-model", default=EMBEDDED,
                        help="'embedded' (default), a Hugging Face id, a local model dir or a .gguf file")
    parser.add_argument("--host", help="default 127.0.0.1; on a Hugging Face Space (SPACE_ID set) 0.0.0.0")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth-file", type=Path,
                        help="logins and roles, written by `python -m labeling users add`; without it the app is "
                             "one local admin and serves 127.0.0.1 only")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="serving precision (auto = bf16, ~2x faster than fp32 on CPU)")
    parser.add_argument("--no-int8-decode", dest="int8_decode", action="store_false",
                        help="decode with the model's own bf16 weights only; by default a bf16 model on the CPU "
                             "reads int8 copies of its weights on steps of at most 4 rows (~1.5x faster for one "
                             "chat, answers may differ slightly; models/decode_weights.py)")
    parser.add_argument("--no-packed-decode", dest="packed_decode", action="store_false",
                        help="do not keep a second copy of the weights packed for oneDNN; by default a model served "
                             "on the CPU reads one on steps wider than 4 rows (the same numbers, ~1.4x faster for "
                             "a team's shared batch, at the cost of the weights' size in memory)")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="prefill every prompt whole; by default the decode loop keeps the keys and values of the "
                             "template's opening that prompts share (the system turn) and prefills only the rest "
                             "(models/scheduler.py)")
    parser.add_argument("--device", default="auto",
                        help="where the served model runs: auto (a CUDA GPU when torch sees one, else the CPU), "
                             "cpu, cuda or cuda:N; asking for cuda without one stops with an error")
    parser.add_argument("--eval-prompts", type=Path,
                        help="prompt file the promotion gate evaluates every round on (default: the bundled 80)")
    parser.add_argument("--eval-max-new-tokens", type=int, help="answer length in those evals (default 128)")
    parser.add_argument("--sync-dir", type=Path,
                        help="the append-only vote journal (default: DATA_DIR/journal); a folder on another disk "
                             "makes it a backup. An empty DB is restored from it at start")
    parser.add_argument("--backend", metavar="URL",
                        help="generate on an OpenAI-compatible server (vLLM started with --enable-lora) instead of "
                             "in this process; README: Serving from vLLM")
    parser.add_argument("--backend-model", metavar="NAME",
                        help="the base's name on that server (default: the one base its /v1/models lists)")
    args = parser.parse_args(argv)
    if args.eval_prompts is not None and not args.eval_prompts.is_file():
        parser.error(f"--eval-prompts: file not found: {args.eval_prompts}")
    host = args.host or (SPACE_HOST if on_space() else "127.0.0.1")
    return Settings(args.data_dir, args.base_model, host, args.port, args.auth_file, args.dtype,
                    args.eval_prompts and args.eval_prompts.resolve(), args.eval_max_new_tokens, args.device,
                    args.sync_dir, backend=args.backend, backend_model=args.backend_model,
                    int8_decode=args.int8_decode, packed_decode=args.packed_decode, prefix_cache=args.prefix_cache)


def freeze_startup_objects() -> None:
    """Put everything made while starting (torch, transformers, gradio: about half a million objects
    that live as long as the app) out of the garbage collector's reach. Otherwise every full
    collection walks them all while every thread waits: bench_votes measured 9 such pauses in 60 bursts of 20 votes,
    median 176 ms and longest 323 ms, and they were the slowest votes. Collections still free what
    is made later; this only stops them re-checking what never goes away."""
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.perf_counter()
    try:  # everything that can refuse to start does so before the model loads
        users = AuthFile(settings.auth_file) if settings.auth_file else None
        space = SpaceConfig.from_env()
        check_exposure(settings.host, users, space)
        if settings.device != "auto":  # auto always resolves (to the CPU without a GPU): no torch import to refuse
            resolve_device(settings.device)
        store = open_store(settings.data_dir, settings.journal_dir)
    except (ValueError, OSError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if space is not None:
        print(space.describe(), flush=True)
    try:  # for `python -m labeling import` on this data dir: the prompts it must keep out of the queue
        write_gate_pointer(settings.data_dir, settings.eval_prompts or GATE_PROMPTS)
    except OSError as exc:
        store.close()
        print(f"error: {settings.data_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        sync_journal(store, settings.journal_dir, space)
        uploader = start_uploads(space, settings.journal_dir) if space is not None else None
    except HubSyncError as exc:
        store.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, StoreWriteError) as exc:
        store.close()
        print(f"error: the journal in {settings.journal_dir}: {exc}", file=sys.stderr)
        return 2
    for user in (users or {}).values():
        if user.legacy:
            print(f"warning: {settings.auth_file}: {user.name} has a plain-text password and the admin role; "
                  "re-add them with `python -m labeling users add` to hash it and pick a role", file=sys.stderr)
    return serve(settings, users, space, store, uploader, started)


def serve(settings: Settings, users: Mapping | None, space: SpaceConfig | None, store: Store, uploader,
          started: float) -> int:
    """Load the model, build the page and serve it until the app is stopped; 2 if the model cannot load."""
    from models import decode_weights
    from models.chat import ChatModel
    from models.remote import RemoteChat
    from pipeline import JobManager
    from ui import arena
    from ui.page_style import PAGE_CSS
    from ui.services import Services

    try:
        if settings.backend:  # the server generates; the evals and training still load --base-model here
            chat = RemoteChat.connect(settings.backend, settings.base_model, settings.cache_dir, settings.backend_model)
            print(chat.note, flush=True)
        else:
            chat = ChatModel.load(settings.base_model, settings.cache_dir, dtype=settings.dtype, device=settings.device)
            print(decode_weights.choose(chat, settings.int8_decode, settings.packed_decode), flush=True)
            chat.prefix_cache = settings.prefix_cache
            chat.scheduler.start()  # its copies of the weights are made now, not on the first user's Generate
    except (ModelLoadError, ValueError, OSError) as exc:
        store.close()
        if uploader is not None:
            uploader.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = JobManager(settings, promoted=store.current_candidate)  # evals compare a round with the candidate too
    if jobs.adopted is not None:
        print(f"adopted the {jobs.adopted.kind} job {jobs.adopted.round_id} (pid {jobs.adopted.process.pid}) that an "
              "earlier app process started: it shows in the Train tab and can be cancelled there", flush=True)
    services = Services(settings=settings, chat=chat, store=store, jobs=jobs, users=users, space=space)
    print(f"model ready in {time.perf_counter() - started:.1f} s", flush=True)
    demo = build_ui(settings, services)
    freeze_startup_objects()
    if uploader is not None:  # a Space is stopped with SIGTERM: exit normally, so the last upload runs (atexit)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo.launch(server_name=settings.host, server_port=settings.port, show_error=True,
                auth=login_checker(users) if users else None,
                head=arena.KEYBOARD_JS, css=PAGE_CSS)  # gradio 6 takes page-level head/css at launch
    return 0


if __name__ == "__main__":
    sys.exit(main())
