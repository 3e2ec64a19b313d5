"""CLI: `python -m labeling export|import|stats --data-dir DIR ...` and `users add --auth-file F ...`.

DuckDB lets one read-write process own the file and the running app is that
process, so export and stats open it read-only, and every command exits 2 with
one line when the app holds the lock. Exit codes: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from formats import load_prompt_file, write_rows
from labeling import pairs
from labeling.store import Store, StoreLocked
from labeling.users import ROLES, add_user


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labeling", description="Preference data: export, import, stats.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write labeled votes as TRL training rows")
    export.add_argument("--data-dir", type=Path, required=True)
    export.add_argument("--format", choices=pairs.KINDS, required=True)
    export.add_argument("--out", type=Path, required=True, help="FILE.parquet or FILE.jsonl")
    load = commands.add_parser("import", help="queue prompts from a .jsonl (prompt / MT-bench) or .csv file")
    load.add_argument("--data-dir", type=Path, required=True)
    load.add_argument("--file", type=Path, required=True)
    load.add_argument("--source", help="label stored with the prompts (default: the file name)")
    stats = commands.add_parser("stats", help="counts, annotators, position bias, agreement")
    stats.add_argument("--data-dir", type=Path, required=True)
    stats.add_argument("--json", action="store_true", help="print machine-readable JSON")
    users = commands.add_parser("users", help="manage the app's logins (--auth-file)")
    users_commands = users.add_subparsers(dest="users_command", required=True)
    add = users_commands.add_parser("add", help="add a user, or replace one's role and password; the password "
                                                "is read from stdin and stored hashed")
    add.add_argument("--auth-file", type=Path, required=True)
    add.add_argument("--user", required=True)
    add.add_argument("--role", choices=ROLES, required=True)
    return parser


def _export(args) -> None:
    """Every row the votes give; the lint says what a training round would leave out of them."""
    if args.out.suffix.lower() not in (".parquet", ".jsonl"):
        raise ValueError(f"--out must end in .parquet or .jsonl, got {args.out.name}")
    with Store(args.data_dir, read_only=True) as store:
        labeled = store.labeled_rows()
    rows, report = pairs.build(args.format, labeled)
    write_rows(rows, args.out)
    print(f"wrote {len(rows)} {args.format} rows to {args.out} "
          f"({report['votes']} votes, {len(report['conflicts'])} conflicts, {report['dropped_split']} dropped)")
    data = pairs.training_data_report(labeled)  # DPO and SFT are linted alike: SFT answers are DPO chosen sides
    print(data.lint.summary())
    for issue in data.lint.issues:
        print(f"  {issue.severity}: {issue.code} x{issue.count}: {issue.message} "
              f"(comparisons {', '.join(str(r['comparison_id'])[:8] for r in issue.rows[:5])})")
    if data.excluded:
        print(f"a training round leaves out {len(data.excluded)} comparisons by default: "
              f"DPO {data.usable_dpo} of {data.dpo_rows} rows, SFT {data.usable_sft} of {data.sft_rows} rows usable")


def _import(args) -> None:
    prompts = load_prompt_file(args.file)
    with Store(args.data_dir) as store:
        added = store.import_prompts(prompts, source=args.source or args.file.name)
        queued = store.queue_size()
    print(f"added {added} of {len(prompts)} prompts ({queued} not yet labeled)")


def _format_stats(s: dict) -> str:
    bias, agree = s["position_bias"], s["agreement"]
    lines = [f"prompts {s['prompts']}  comparisons {s['comparisons']}  votes {s['votes']}",
             "choices: " + (", ".join(f"{c} {s['choices'].get(c, 0)}" for c in pairs.CHOICES))]
    lines += ["annotators:"] + [f"  {name}: {n}" for name, n in s["annotators"].items()]
    share = "n/a" if bias["left_share"] is None else f"{bias['left_share']:.1%}"
    lines.append(f"position bias: left won {share} of {bias['decisive']} decisive votes (50% = unbiased)")
    alpha = agree["krippendorff_alpha"]
    lines.append(f"agreement: {agree['comparisons']} comparisons with >1 annotator, "
                 f"Krippendorff alpha {'n/a' if alpha is None else f'{alpha:.3f}'}")
    for k in agree["cohen_kappa"]:
        kappa = "n/a" if k["kappa"] is None else f"{k['kappa']:.3f}"
        lines.append(f"  Cohen kappa {k['annotators'][0]} / {k['annotators'][1]}: {kappa} (n={k['n']})")
    return "\n".join(lines)


def _stats(args) -> None:
    with Store(args.data_dir, read_only=True) as store:
        result = store.stats()
    print(json.dumps(result, indent=2) if args.json else _format_stats(result))


def _users(args) -> None:
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {args.user}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    add_user(args.auth_file, args.user, args.role, password)
    print(f"{args.user} ({args.role}) saved in {args.auth_file}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"export": _export, "import": _import, "stats": _stats, "users": _users}[args.command](args)
    except StoreLocked as e:
        hint = "use the app's export" if args.command == "export" else "use the app"
        print(f"error: {e}. Stop the app first, or {hint}.", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
