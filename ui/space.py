"""Running as a Hugging Face Space (the environment has SPACE_ID): who is who, and where the votes are kept.

On a Space the login is "Sign in with Hugging Face" (gradio's `gr.LoginButton`, which needs
`hf_oauth: true` in README.md's front matter), instead of `--auth-file`. Roles come from Space
variables listing HF user names, comma-separated, spelled as on their profiles:
- PREFERENCE_ADMINS     admins
- PREFERENCE_REVIEWERS  reviewers
Every other signed-in HF user is an annotator. A visitor who has not signed in can look at the
page but not generate, vote or change anything (`Services.require` refuses them).

The votes outlive the Space's disk in a dataset repo: the variable PREFERENCE_DATASET_REPO names it
and the secret HF_TOKEN (write access) reaches it; labeling/hub_sync.py does the Hub calls.
Off a Space nothing here runs but `hf_username`, which finds no Hugging Face login there.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labeling import journal
from labeling.hub_sync import HubJournal, JournalUploader

# gradio takes seconds to import, and app.py checks a Space's settings before it: login_button imports it itself
if TYPE_CHECKING:
    import gradio as gr

ADMINS_VAR = "PREFERENCE_ADMINS"
REVIEWERS_VAR = "PREFERENCE_REVIEWERS"
DATASET_VAR = "PREFERENCE_DATASET_REPO"
TOKEN_VAR = "HF_TOKEN"
SPACE_HOST = "0.0.0.0"  # a Space routes its public URL to port 7860 on any interface
# what a Space sets when its README has `hf_oauth: true`; without them gradio would fake the login
OAUTH_VARS = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
HF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def hf_username(request: gr.Request | None) -> str | None:
    """The Hugging Face user signed in with gr.LoginButton, or None. gradio keeps the OAuth answer in
    the session cookie, which exists only where it installed its session middleware (an app with a
    LoginButton: on a Space only) and is signed with the Space's OAuth secret, so a client cannot forge it."""
    scope = getattr(getattr(request, "request", None), "scope", None)
    session = scope.get("session") if isinstance(scope, dict) else None
    info = (session or {}).get("oauth_info") or {}
    if not info or (info.get("expires_at") or float("inf")) < time.time():
        return None
    return (info.get("userinfo") or {}).get("preferred_username") or None


def on_space(environ=os.environ) -> bool:
    return bool(environ.get("SPACE_ID"))


def _names(environ, var: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in environ.get(var, "").split(",") if n.strip())
    bad = sorted(n for n in names if not HF_NAME.match(n))
    if bad:
        raise ValueError(f"the Space variable {var} lists {bad[0]!r}, which is not a Hugging Face user name; "
                         "list names separated by commas, e.g. alice,bob")
    return names


@dataclass(frozen=True)
class SpaceConfig:
    space_id: str
    admins: frozenset[str] = frozenset()
    reviewers: frozenset[str] = frozenset()
    dataset_repo: str | None = None
    token: str | None = None

    @classmethod
    def from_env(cls, environ=os.environ) -> SpaceConfig | None:
        """The Space's settings, None off a Space; ValueError (one line) for a Space that cannot log anyone in safely."""
        if not on_space(environ):
            return None
        missing = [v for v in OAUTH_VARS if not environ.get(v)]
        if environ.get("SYSTEM") != "spaces" or missing:
            # gradio then serves a fake login (any visitor becomes the machine's HF account) signed with a
            # guessable cookie key: refuse rather than hand out roles on it
            raise ValueError(f"SPACE_ID is set but the Space's OAuth app is not ({', '.join(missing) or 'SYSTEM=spaces'} "
                             "missing): put `hf_oauth: true` in README.md's front matter, or unset SPACE_ID off a Space")
        try:
            import authlib  # noqa: F401  gradio's real OAuth routes import it only at launch
            import itsdangerous  # noqa: F401
        except ImportError:
            raise ValueError("Sign in with Hugging Face needs gradio's oauth extra: pip install 'gradio[oauth]'") from None
        repo = environ.get(DATASET_VAR, "").strip() or None
        token = environ.get(TOKEN_VAR, "").strip() or None
        if repo and not token:
            raise ValueError(f"the Space variable {DATASET_VAR} is {repo} but there is no {TOKEN_VAR} secret: add a "
                             "token with write access to that dataset repo in the Space's settings")
        return cls(environ["SPACE_ID"], _names(environ, ADMINS_VAR), _names(environ, REVIEWERS_VAR), repo, token)

    def role_of(self, request) -> str:
        """Admins and reviewers by name; everyone else, signed in or not, an annotator (not signing in
        is refused separately, by Services.require, before anything is written)."""
        name = hf_username(request)
        if name in self.admins:
            return "admin"
        return "reviewer" if name in self.reviewers else "annotator"

    def describe(self) -> str:
        """One line for the start-up log: who has which role and where the votes go."""
        admins = ", ".join(sorted(self.admins)) or f"nobody (set {ADMINS_VAR})"
        reviewers = ", ".join(sorted(self.reviewers)) or "nobody"
        kept = (f"the dataset repo {self.dataset_repo}" if self.dataset_repo else
                f"this Space's disk only, lost at its next restart (set {DATASET_VAR} and the {TOKEN_VAR} secret)")
        return f"Space {self.space_id}: Sign in with Hugging Face; admins {admins}; reviewers {reviewers}; votes kept in {kept}"

    def hub(self) -> HubJournal | None:
        return HubJournal(self.dataset_repo, self.token) if self.dataset_repo else None


def fetch_journal(space: SpaceConfig, store, journal_dir: Path) -> int:
    """A start with an empty DB and no local segments (a Space's disk is new after a restart) downloads
    the dataset repo's segments first, so the ordinary restore rebuilds the DB from them. Checks the
    token and the repo either way, so a wrong one stops the start instead of failing later unseen."""
    hub = space.hub()
    if hub is None:
        return 0
    hub.connect()
    if not (store.is_empty() and not journal.segments(journal_dir)):
        return 0
    copied = hub.download(journal_dir)
    print(f"downloaded {copied} journal segments from the dataset repo {space.dataset_repo}", flush=True)
    return copied


def start_uploads(space: SpaceConfig, journal_dir: Path) -> JournalUploader | None:
    hub = space.hub()
    return hub.start_uploads(journal_dir) if hub is not None else None


def login_button(space: SpaceConfig | None) -> gr.LoginButton | None:
    """The header's "Sign in with Hugging Face" button, on a Space only: off a Space gradio would mock it."""
    if space is None:
        return None
    import gradio as gr

    return gr.LoginButton(elem_id="hf-login", size="sm")

