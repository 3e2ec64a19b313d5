"""CLI: `python -m labeling export|import|stats|restore --data-dir DIR ...` and `users add|remove|list --auth-file F ...`.

DuckDB lets one read-write process own the file and the running app is that
process. So export and stats open it read-only, and while the app holds it they
read the journal instead (rebuilt in memory, labeling/journal.py) and say on
stderr how fresh it is; import and restore write, so they exit 2 with one line
while the app runs. Exit codes: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from formats import gate_prompts_of, leave_out_gate_prompts, load_prompt_file, write_rows
from labeling import journal, lint, pairs
from labeling.store import Store, StoreLocked
from labeling.users import ROLES, add_user, read_users, remove_user


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labeling",
                                     description="Preference data: export, import, stats, restore.")
    commands = parser.add_subparsers(dest="command", required=True)
    sync_help = "the app's journal dir, its --sync-dir (default: DATA_DIR/journal)"
    export = commands.add_parser("export", help="write labeled votes as TRL training rows")
    export.add_argument("--data-dir", type=Path, required=True)
    export.add_argument("--sync-dir", type=Path, help=sync_help + "; read while the app holds the DB")
    export.add_argument("--format", choices=pairs.KINDS, required=True)
    export.add_argument("--out", type=Path, required=True, help="FILE.parquet or FILE.jsonl")
    load = commands.add_parser("import", help="queue prompts from a .jsonl (prompt / MT-bench) or .csv file")
    load.add_argument("--data-dir", type=Path, required=True)
    load.add_argument("--file", type=Path, required=True)
    load.add_argument("--source", help="label stored with the prompts (default: the file name)")
    load.add_argument("--sync-dir", type=Path, help=sync_help + "; the new prompts are journaled there")
    load.add_argument("--eval-prompts", type=Path,
                      help="the promotion gate's prompt set, whose prompts are left out of the queue so that no round "
                           "trains on what judges it (default: the set the app last started on --data-dir uses, "
                           "its --eval-prompts, else the bundled one)")
    stats = commands.add_parser("stats", help="counts, annotators, position bias, agreement")
    stats.add_argument("--data-dir", type=Path, required=True)
    stats.add_argument("--sync-dir", type=Path, help=sync_help + "; read while the app holds the DB")
    stats.add_argument("--json", action="store_true", help="print machine-readable JSON")
    restore = commands.add_parser("restore", help="rebuild the DB from journal segments (idempotent)")
    restore.add_argument("--from", dest="source", type=Path, required=True, help="a journal dir (a --sync-dir)")
    restore.add_argument("--data-dir", type=Path, required=True)
    restore.add_argument("--sync-dir", type=Path, help=sync_help + "; the restored rows are journaled there too")
    users = commands.add_parser("users", help="manage the app's logins (--auth-file)")
    users_commands = users.add_subparsers(dest="users_command", required=True)
    about_password = ("the password (at least 8 characters) is asked for on a terminal, or read from the first "
                      "line of stdin (echo \"$PASSWORD\" | ...), and stored hashed")
    add = users_commands.add_parser("add", help="add a user, or replace one's role and password; " + about_password,
                                    description="Add a user, or replace one's role and password. " + about_password[0].upper()
                                    + about_password[1:] + ".")
    add.add_argument("--auth-file", type=Path, required=True)
    add.add_argument("--user", required=True)
    add.add_argument("--role", choices=ROLES, required=True)
    remove = users_commands.add_parser("remove", help="take a user's login away (a running app notices at once)")
    remove.add_argument("--auth-file", type=Path, required=True)
    remove.add_argument("--user", required=True)
    listed = users_commands.add_parser("list", help="who may log in, with their roles (never the hashes)")
    listed.add_argument("--auth-file", type=Path, required=True)
    return parser


def _journal_dir(args) -> Path:
    return args.sync_dir or journal.default_dir(args.data_dir)


@contextmanager
def _reading(args):
    """The store to read: the DB file, or the journal rebuilt in memory while the app holds the file."""
    try:
        store = Store(args.data_dir, read_only=True)
    except (StoreLocked, FileNotFoundError) as exc:
        directory = _journal_dir(args)
        if not journal.segments(directory):
            raise type(exc)(f"{exc}; and no journal in {directory} to read instead (pass the app's --sync-dir)") \
                from None
        store, found = Store.from_journal(directory)
        newest = found["newest"]
        age = "" if newest is None else \
            f", newest record {newest:%Y-%m-%d %H:%M:%S} UTC, {_ago(newest)} ago"
        print(f"note: {str(exc).split(' (')[0]}: read the journal in {directory} instead "
              f"({found.get('votes', 0)} votes{age})", file=sys.stderr)
    with store:
        yield store


def _ago(when: datetime) -> str:
    seconds = max(0, (datetime.now(timezone.utc).replace(tzinfo=None) - when).total_seconds())
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def _export(args) -> None:
    """Every row the votes give; the lint says what a training round would leave out of them."""
    if args.out.suffix.lower() not in (".parquet", ".jsonl"):
        raise ValueError(f"--out must end in .parquet or .jsonl, got {args.out.name}")
    with _reading(args) as store:
        labeled = store.labeled_rows()  # less the comparisons reviewers excluded
        excluded = store.exclusions()
    rows, report = pairs.build(args.format, labeled)
    write_rows(rows, args.out)
    print(f"wrote {len(rows)} {args.format} rows to {args.out} "
          f"({report['votes']} votes, {len(report['conflicts'])} conflicts, {report['dropped_split']} dropped)")
    if excluded:
        print(f"left out {sum(e['votes'] for e in excluded)} votes on {len(excluded)} comparisons excluded by "
              f"reviewers ({', '.join(sorted({e['by_user'] for e in excluded}))})")
    data = pairs.training_data_report(labeled)  # DPO and SFT are linted alike: SFT answers are DPO chosen sides
    print(data.lint.summary())
    for issue in data.lint.issues:
        print(f"  {issue.severity}: {issue.code} x{issue.count}: {issue.message}\n"
              f"    comparisons: {lint.comparison_list(issue)}")
    if data.lint.issues:
        print("  a reviewer can exclude any of these in the app's Annotators tab (Review), with a reason")
    if data.excluded:
        print(f"a training round leaves out {len(data.excluded)} comparisons by default: "
              f"DPO {data.usable_dpo} of {data.dpo_rows} rows, SFT {data.usable_sft} of {data.sft_rows} rows usable")


def _import(args) -> None:
    gate_file = args.eval_prompts or gate_prompts_of(args.data_dir)
    prompts, gated = leave_out_gate_prompts(load_prompt_file(args.file), load_prompt_file(gate_file))
    with Store(args.data_dir, journal_dir=_journal_dir(args)) as store:
        added = store.import_prompts(prompts, source=args.source or args.file.name)
        queued = store.queue_size()
    print(f"added {added} of {len(prompts) + len(gated)} prompts ({queued} not yet labeled)")
    if gated:
        print(f"left out {len(gated)} prompt{'' if len(gated) == 1 else 's'} the promotion gate evaluates on "
              f"({gate_file}): a round trained on them would be judged on questions it has seen")


def _format_stats(s: dict) -> str:
    bias, agree = s["position_bias"], s["agreement"]
    lines = [f"prompts {s['prompts']}  comparisons {s['comparisons']}  votes {s['votes']}",
             "choices: " + (", ".join(f"{c} {s['choices'].get(c, 0)}" for c in pairs.CHOICES))]
    if s.get("excluded"):
        lines.append(f"excluded from training by reviewers: {s['excluded']} comparisons (counted above)")
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
    with _reading(args) as store:
        result = store.stats()
    print(json.dumps(result, indent=2) if args.json else _format_stats(result))


def _restore(args) -> None:
    if not journal.segments(args.source):
        raise FileNotFoundError(f"no journal segments (segment-*.jsonl) in {args.source}")
    with Store(args.data_dir, journal_dir=_journal_dir(args)) as store:
        found = store.restore_from_journal(args.source)
        copied = store.journal_missing()  # the data dir's own journal can rebuild it from now on
        stats = store.stats()
    print(f"restored {journal.describe(found)} from {args.source}; {args.data_dir} now holds {stats['votes']} votes on "
          f"{stats['comparisons']} comparisons" + (f"; journaled {sum(copied.values())} rows into "
                                                   f"{_journal_dir(args)}" if copied else ""))


def _users(args) -> None:
    if args.users_command == "list":
        for user in read_users(args.auth_file).values():
            print(f"{user.name}\t{user.role}" + ("\t(plain-text password: re-add to hash it)" if user.legacy else ""))
        return
    if args.users_command == "remove":
        remove_user(args.auth_file, args.user)
        print(f"{args.user} removed from {args.auth_file}")
        return
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
        {"export": _export, "import": _import, "stats": _stats, "restore": _restore,
         "users": _users}[args.command](args)
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
