"""The app's settings, from its command line (app.py parse_args). Kept apart from ui/services.py, which
imports gradio and the model code, so that app.py can check them and refuse a bad start in a fraction of
a second, before those imports (seconds) and the model load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labeling.journal import default_dir as default_journal_dir
from models.loading import EMBEDDED


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    base_model: str = EMBEDDED
    host: str = "127.0.0.1"
    port: int = 7860
    auth_file: Path | None = None
    dtype: str = "auto"
    eval_prompts: Path | None = None  # the gate's prompt set; None = the bundled 80 prompts
    eval_max_new_tokens: int | None = None  # None = the evals' default answer length
    device: str = "auto"  # serving: models.loading.resolve_device
    sync_dir: Path | None = None  # the vote journal's folder (--sync-dir); None = data_dir/journal
    backend: str | None = None  # --backend URL: an OpenAI-compatible server generates (models/remote.py)
    backend_model: str | None = None  # the base's name on that server; None = the one it lists
    int8_decode: bool = True  # narrow decode steps read int8 weights where the model allows (models/decode_weights.py)
    packed_decode: bool = True  # wider steps read oneDNN-packed weights where the model allows (the same)
    prefix_cache: bool = True  # the decode loop keeps the shared prompt opening's keys and values (models/scheduler.py)

    @property
    def journal_dir(self) -> Path:
        return self.sync_dir or default_journal_dir(self.data_dir)

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache" / "models"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def corpus_dir(self) -> Path:  # uploaded in the Train tab: CPT's text and the retrieval baseline's documents
        return self.data_dir / "corpus"
