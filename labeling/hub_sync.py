"""The vote journal on a Hugging Face dataset repo: the copy that outlives a Space's disk.

Every call to the Hub in this project is here. The repo holds the journal's segments under
`journal/` (labeling/journal.py): each segment has one writer and a unique name, so an upload only
ever adds a file or replaces a segment with a longer copy of itself, and uploads never conflict.
- `HubJournal.connect()` checks the token and the repo at start (creating it, private, if missing);
- `download()` copies the repo's segments into an empty local journal, so the restore rebuilds the DB;
- `start_uploads()` runs huggingface_hub's `CommitScheduler` on the journal dir every few minutes,
  and once more at a normal exit.
Anything wrong (no token, a token without write access, a malformed repo id, no network) is a
`HubSyncError` with one line, which the app turns into exit 2 at start.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from huggingface_hub import CommitScheduler, HfApi

from labeling.journal import SEGMENT_GLOB, segments

PATH_IN_REPO = "journal"
UPLOAD_EVERY_MINUTES = 5  # huggingface_hub's default; a Space that is killed loses at most this much


class HubSyncError(ValueError):
    """The dataset repo cannot be used; the message is one line."""


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class JournalUploader(CommitScheduler):
    """CommitScheduler that says on stderr when an upload fails (its own log line can go unseen)
    and keeps the last failure for whoever asks."""

    last_error: str | None = None

    def push_to_hub(self):
        try:
            info = super().push_to_hub()
        except Exception as exc:  # any failure of the upload thread, network ones included
            self.last_error = _one_line(exc)
            print(f"warning: uploading the journal to the dataset repo {self.repo_id} failed ({self.last_error}); "
                  f"the next try is in {self.every} minutes", file=sys.stderr, flush=True)
            raise
        self.last_error = None
        return info


class HubJournal:
    """The dataset repo `repo_id` that keeps the journal, reached with `token`."""

    def __init__(self, repo_id: str, token: str, api: HfApi | None = None):
        self.repo_id = repo_id
        self.api = api or HfApi(token=token)

    def connect(self) -> None:
        """Check the token and the repo now, creating the repo (private: votes are the team's data) if missing."""
        try:
            self.api.create_repo(self.repo_id, repo_type="dataset", private=True, exist_ok=True)
        except Exception as exc:  # HTTP 401/403, a malformed id, no network: all stop the start the same way
            raise HubSyncError(f"cannot use the dataset repo {self.repo_id} with the HF_TOKEN secret "
                               f"(it needs write access): {_one_line(exc)}") from None

    def download(self, journal_dir: Path) -> int:
        """Copy the repo's segments that `journal_dir` lacks into it; how many were copied."""
        journal_dir = Path(journal_dir)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                folder = self.api.snapshot_download(self.repo_id, repo_type="dataset", local_dir=tmp,
                                                    allow_patterns=f"{PATH_IN_REPO}/{SEGMENT_GLOB}")
            except Exception as exc:
                raise HubSyncError(f"cannot download the journal from the dataset repo {self.repo_id}: "
                                   f"{_one_line(exc)}") from None
            found = segments(Path(folder) / PATH_IN_REPO)
            journal_dir.mkdir(parents=True, exist_ok=True)
            copied = 0
            for path in found:
                target = journal_dir / path.name
                if target.exists():
                    continue
                partial = target.with_name(f".{target.name}.part")  # never a half-copied segment under its name
                shutil.copyfile(path, partial)
                os.replace(partial, target)
                copied += 1
        return copied

    def start_uploads(self, journal_dir: Path, every: float = UPLOAD_EVERY_MINUTES) -> JournalUploader:
        """Upload the journal's segments now, then every `every` minutes and at a normal exit."""
        try:
            return JournalUploader(repo_id=self.repo_id, repo_type="dataset", folder_path=journal_dir,
                                   path_in_repo=PATH_IN_REPO, every=every, allow_patterns=[SEGMENT_GLOB],
                                   private=True, hf_api=self.api)
        except Exception as exc:
            raise HubSyncError(f"cannot upload to the dataset repo {self.repo_id}: {_one_line(exc)}") from None
