"""Finished checkpoints on disk: `checkpoints/<round-id>/{adapter/ or model/, round.json, eval.json}`.

`adapter/` is a LoRA adapter on the round's base; `model/` is a whole model from full fine-tuning.

The directory is the registry: a round is listed once its dir exists under its
final name (run.py renames it into place atomically), so there is no index to
fall out of sync. Temp dirs (leading dot) are ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    round_id: str
    path: Path
    round: dict = field(default_factory=dict)  # round.json: base model, snapshot hash, recipe, metrics
    eval: dict | None = None  # eval.json once the evals ran, and only if it was made on this adapter
    stale_eval: dict | None = None  # an eval.json made on other adapter weights than the ones now on disk
    fingerprint: str | None = None  # content hash of adapter/ (models.loading.adapter_fingerprint)

    @property
    def full(self) -> bool:
        """Full fine-tuning: a whole model dir (a second copy of the weights when served), not an adapter."""
        return (self.path / "model").is_dir() and not (self.path / "adapter").is_dir()

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def weights_dir(self) -> Path:
        """What the evals and the app load: adapter/ on the base, or model/ on its own."""
        return self.path / ("model" if self.full else "adapter")

    @property
    def created_at(self) -> str:
        return str(self.round.get("finished_at", ""))

    @property
    def regression(self) -> bool | None:
        return None if self.eval is None else bool(self.eval.get("regression"))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def list_checkpoints(checkpoints_dir: Path) -> list[Checkpoint]:
    """All complete checkpoints, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        round_info = _read_json(path / "round.json")
        weights = next((path / name for name in ("adapter", "model") if (path / name).is_dir()), None)
        if round_info is None or weights is None:
            continue  # not a finished round
        report, fingerprint = _read_json(path / "eval.json"), _fingerprint(weights)
        if report is not None and report.get("adapter_fingerprint") not in (None, fingerprint):
            # the gate's verdict belongs to the weights it evaluated, not to the round's name: an
            # adapter replaced on disk after its evals is unevaluated again
            found.append(Checkpoint(path.name, path, round_info, None, report, fingerprint))
        else:
            found.append(Checkpoint(path.name, path, round_info, report, None, fingerprint))
    return sorted(found, key=lambda c: (c.created_at, c.round_id))


_FINGERPRINTS: dict[tuple, str] = {}  # (dir, file stats) -> fingerprint: listing runs every UI refresh


def _fingerprint(adapter_dir: Path) -> str:
    from models.loading import adapter_fingerprint

    stats = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(adapter_dir.rglob("*"))
                  if f.is_file())
    key = (str(adapter_dir.resolve()), stats)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = adapter_fingerprint(adapter_dir)
    return _FINGERPRINTS[key]


def get_checkpoint(checkpoints_dir: Path, round_id: str) -> Checkpoint | None:
    return next((c for c in list_checkpoints(checkpoints_dir) if c.round_id == round_id), None)


# ---------------------------------------------------------------- temp dirs of rounds in progress

def temp_dir_for(checkpoints_dir: Path, round_id: str) -> Path:
    """Where run.py builds a round before renaming it to `<checkpoints_dir>/<round_id>`."""
    return Path(checkpoints_dir) / f".{round_id}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_dirs(checkpoints_dir: Path) -> list[Path]:
    """Delete temp dirs left by killed rounds (their `.pid` names a dead process); returns what went."""
    removed = []
    for path in Path(checkpoints_dir).glob(".*.tmp"):
        try:
            dead = not _alive(int((path / ".pid").read_text()))
        except (OSError, ValueError):  # no pid: a round just starting, or one killed before it wrote it
            dead = path.exists() and path.stat().st_mtime < time.time() - 3600
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
