"""The preference loop app: chat, label, train and gate, in one Gradio page.

    python app.py [--data-dir DIR] [--base-model M] [--host H] [--port P] [--auth-file F]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402

from models.loading import EMBEDDED, ModelLoadError  # noqa: E402
from models.chat import ChatModel  # noqa: E402
from labeling.store import Store  # noqa: E402
from ui import arena, evals, train  # noqa: E402
from ui.chat import chat_tab, refresh_pickers  # noqa: E402
from pipeline import JobManager  # noqa: E402
from ui.services import Services, Settings, annotator_of  # noqa: E402

TITLE = "Preference loop"


def build_ui(settings: Settings, services: Services) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"## {TITLE}\nBase model: `{services.chat.base_name}` · data: `{settings.data_dir}`",
            elem_id="header",
        )
        with gr.Tabs():
            with gr.Tab("Arena", id="arena") as arena_page:
                arena_progress, *arena_models = arena.arena_tab(services)
            with gr.Tab("Chat", id="chat") as chat_page:
                chat_models = chat_tab(services)
            with gr.Tab("Train", id="train") as train_page:
                train_choices, train_gate = train.train_tab(services)
            with gr.Tab("Evals", id="evals") as evals_page:
                evals_picker, evals_outputs = evals.evals_tab(services)
        private = dict(api_visibility="private")
        def load_progress(request: gr.Request) -> str:
            return arena.progress_text(services, annotator_of(request))

        demo.load(load_progress, None, arena_progress, **private)
        # checkpoints finished since the page loaded appear when a tab is opened again
        arena_page.select(partial(arena.refresh_models, services), arena_models, arena_models, **private)
        chat_page.select(partial(refresh_pickers, services), chat_models, chat_models, **private)
        train_refresh = partial(train.start_gate, services)
        demo.load(train_refresh, train_choices, train_gate, **private)
        train_page.select(train_refresh, train_choices, train_gate, **private)
        evals_refresh = lambda picked: evals.refresh(services, picked)  # noqa: E731
        demo.load(evals_refresh, evals_picker, evals_outputs, **private)
        evals_page.select(evals_refresh, evals_picker, evals_outputs, **private)
    # One generation at a time on the shared weights; others wait in gradio's queue.
    demo.queue(default_concurrency_limit=1)
    return demo


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """`user:password` per line; blank lines and # comments ignored."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{path}:{number}: expected 'user:password'")
        pairs.append((user.strip(), password.strip()))
    if not pairs:
        raise ValueError(f"{path}: no 'user:password' lines")
    return pairs


def create_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    chat = ChatModel.load(settings.base_model, settings.cache_dir, dtype=settings.dtype)
    return Services(settings=settings, chat=chat, store=Store(settings.data_dir), jobs=JobManager(settings))


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="votes DB, snapshots, checkpoints")
    parser.add_argument("--base-model", default=EMBEDDED,
                        help="'embedded' (default), a Hugging Face id, a local model dir or a .gguf file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth-file", type=Path, help="file of user:password lines; enables login")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="serving precision (auto = bf16, ~2x faster than fp32 on CPU)")
    parser.add_argument("--eval-prompts", type=Path,
                        help="prompt file the promotion gate evaluates every round on (default: the bundled 80)")
    parser.add_argument("--eval-max-new-tokens", type=int, help="answer length in those evals (default 128)")
    args = parser.parse_args(argv)
    if args.eval_prompts is not None and not args.eval_prompts.is_file():
        parser.error(f"--eval-prompts: file not found: {args.eval_prompts}")
    return Settings(args.data_dir, args.base_model, args.host, args.port, args.auth_file, args.dtype,
                    args.eval_prompts and args.eval_prompts.resolve(), args.eval_max_new_tokens)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.perf_counter()
    try:
        auth = read_auth_file(settings.auth_file) if settings.auth_file else None
        services = create_services(settings)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model ready in {time.perf_counter() - started:.1f} s", flush=True)
    demo = build_ui(settings, services)
    demo.launch(server_name=settings.host, server_port=settings.port, auth=auth, show_error=True,
                head=arena.KEYBOARD_JS)  # gradio 6 takes page-level head/js at launch
    return 0


if __name__ == "__main__":
    sys.exit(main())
