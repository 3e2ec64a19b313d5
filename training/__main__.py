"""`python -m training run ...` trains one round; `python -m training list --out DIR` lists checkpoints.

Exit codes of `run`: 0 done (the last stdout line is the checkpoint path), 2 bad input (one-line
error, nothing trained), 1 training failed, 130/143 cancelled by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


# documented short spellings of config flags (README); every field also has its own --field-name
ALIASES = {"max_steps": ["--steps"], "learning_rate": ["--lr"], "num_epochs": ["--epochs"]}
METAVARS = {int: "N", float: "X", str: "TEXT"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` flag per RoundConfig field, typed and described by the field itself.

    Every flag defaults to None (not given), so the recipe's value stands unless the flag is used.
    """
    from training.config import RoundConfig, field_type

    group = parser.add_argument_group(
        "config", "override the recipe's RoundConfig fields (training/config.py); the defaults shown are "
                  "RoundConfig's, which a recipe may change")
    for f in dataclasses.fields(RoundConfig):
        kind, meta = field_type(f.name), f.metadata
        flags = [*ALIASES.get(f.name, []), f"--{f.name.replace('_', '-')}"]
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        facts = ([] if default is None else [f"default: {default}"]) + (
            [f"{meta['min']} to {meta['max']}"] if "min" in meta else [])
        help_text = (f"{meta['help']} ({'; '.join(facts)})" if facts else meta["help"]).replace("%", "%%")
        if kind is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif "choices" in meta:
            group.add_argument(*flags, dest=f.name, choices=meta["choices"], help=help_text)
        else:
            group.add_argument(*flags, dest=f.name, type=kind, metavar=METAVARS[kind], help=help_text)
    group.add_argument("--no-4bit", dest="load_in_4bit", action="store_false", default=None,
                       help="plain LoRA on unquantized weights (same as --no-load-in-4bit)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train one round (QLoRA/LoRA/full; DPO, SFT or CPT) on a snapshot or corpus",
                         description="Train one round. Flags override the recipe, which overrides RoundConfig.")
    run.add_argument("--data", required=True, type=Path, help="snapshot .jsonl/.parquet in trl conversational format")
    run.add_argument("--out", required=True, type=Path, help="checkpoints dir; the round goes to OUT/<round-id>/")
    run.add_argument("--recipe", help="recipe name in training/recipes/ or a .yaml path (default: <method>_qlora, "
                                           "or <method>_full with --full)")
    run.add_argument("--round-id", help="default: r-YYYYmmdd-HHMMSS-<method>")
    run.add_argument("--log-dir", type=Path, help="metrics.jsonl, train.log, status.json (default: OUT/.runs/<id>)")
    run.add_argument("--cache-dir", type=Path, help="converted GGUF models (default: OUT/../cache/models)")
    add_config_flags(run)

    listing = sub.add_parser("list", help="list finished checkpoints")
    listing.add_argument("--out", required=True, type=Path, help="checkpoints dir")
    return parser


def command_run(args) -> int:
    from training.config import RoundConfig, default_recipe, load_recipe
    from training.run import BadInput, Cancelled, one_line, run_round

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RoundConfig)}
    recipe = args.recipe or default_recipe(args.method or "dpo", bool(args.full))
    try:
        config = load_recipe(recipe).with_overrides(**overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        checkpoint = run_round(config, args.data, args.out, round_id=args.round_id, log_dir=args.log_dir,
                               cache_dir=args.cache_dir, recipe=recipe)
    except Cancelled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("error: cancelled", file=sys.stderr)
        return 130
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: training failed: {one_line(exc)}", file=sys.stderr)
        return 1
    print(checkpoint)
    return 0


def command_list(args) -> int:
    from training.registry import list_checkpoints

    checkpoints = list_checkpoints(args.out)
    if not checkpoints:
        print(f"no checkpoints in {args.out}")
    for c in checkpoints:
        metrics = c.round.get("metrics", {})
        flag = {None: "not evaluated", True: "REGRESSION", False: "passed"}[c.regression]
        print(f"{c.round_id}\t{c.round.get('method', '?')}\t{c.created_at}\t"
              f"best held-out loss {metrics.get('best_eval_loss')}\t{flag}\t{c.path}")
    return 0


def limit_heap_growth() -> None:
    """Serve big tensors from mmap so freed memory goes back to the OS.

    glibc raises its mmap threshold after each large free, so activation-sized tensors end up on
    a heap that fragments: a DPO step on the embedded model peaked at 8.5 GB RSS instead of 5.9 GB.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB, fixed
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return command_list(args)
    limit_heap_growth()
    import datasets
    import transformers

    # progress goes to metrics.jsonl and train.log, not \r bars in a log file (or around the one-line error)
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_warning()
    return command_run(args)


if __name__ == "__main__":
    sys.exit(main())
