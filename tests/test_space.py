"""Running as a Hugging Face Space (ui/space.py, labeling/hub_sync.py), offline.

Roles come from the Space variables, a visitor who has not signed in is refused, the exposure rule
accepts a Space's HF login, and the journal travels to a dataset repo and back: the real segment
writer, CommitScheduler, download and restore run; only HfApi's network calls (create_repo,
create_commit, snapshot_download) are replaced by a folder that plays the repo.
"""

from __future__ import annotations

import fnmatch
import shutil
import time
from pathlib import Path

import gradio as gr
import gradio.oauth
import pytest
from huggingface_hub import HfApi
from starlette.requests import Request as StarletteRequest

import app
from labeling import journal
from labeling.hub_sync import PATH_IN_REPO
from labeling.store import Store
from tests.test_journal import content, fill, lose_db
from ui import arena
from ui.services import Services, annotator_of
from ui.settings import Settings
from ui.space import SpaceConfig, login_button

SPACE_ENV = {
    "SPACE_ID": "team/preference-loop", "SYSTEM": "spaces",
    # what a Space with `hf_oauth: true` gets; fake values, nothing is called with them here
    "OAUTH_CLIENT_ID": "client-id", "OAUTH_CLIENT_SECRET": "client-secret", "OAUTH_SCOPES": "openid profile",
    "OPENID_PROVIDER_URL": "https://huggingface.co",
    "PREFERENCE_ADMINS": "ada", "PREFERENCE_REVIEWERS": " rita, rob ,",
}
REPO = "team/preference-votes"


@pytest.fixture
def space_env(monkeypatch):
    for name in ("PREFERENCE_DATASET_REPO", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SPACE_ENV.items():
        monkeypatch.setenv(name, value)
        if name.startswith(("OAUTH_", "OPENID_")):  # gradio reads these once, at import, as a Space sets them first
            monkeypatch.setattr(gradio.oauth, name, value)
    return monkeypatch


def hf_request(user: str | None, expires_in: float = 3600) -> gr.Request:
    """A gradio request as a Space serves it: gradio's session middleware put the OAuth answer in the
    session (scope["session"]); None is a visitor who has not signed in."""
    session = {} if user is None else {"oauth_info": {
        "access_token": "token", "expires_at": time.time() + expires_in,
        "userinfo": {"preferred_username": user, "name": user.title()}}}
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "headers": [], "session": session}
    return gr.Request(request=StarletteRequest(scope), session_hash="session-1")


def test_roles_come_from_the_space_variables(space_env):
    import os

    space = SpaceConfig.from_env()
    assert (space.admins, space.reviewers) == ({"ada"}, {"rita", "rob"})
    assert space.dataset_repo is None
    services = Services(settings=Settings(), chat=None, space=space)
    roles = {name: services.role_of(hf_request(name)) for name in ("ada", "rita", "rob", "carl", "Ada")}
    assert roles == {"ada": "admin", "rita": "reviewer", "rob": "reviewer", "carl": "annotator",
                     "Ada": "annotator"}  # names as spelled on the profile, nothing guessed
    assert services.role_of(hf_request(None)) == "annotator"  # sees what an annotator sees; cannot act (below)
    assert annotator_of(hf_request("carl")) == "carl" and annotator_of(hf_request("ada", expires_in=-1)) == "local"
    assert services.role_of(hf_request("ada", expires_in=-1)) == "annotator"  # an expired login is no login

    assert SpaceConfig.from_env({}) is None  # off a Space: nothing changes
    with pytest.raises(ValueError, match="not a Hugging Face user name"):
        SpaceConfig.from_env({**os.environ, "PREFERENCE_ADMINS": "ada; rm -rf"})
    with pytest.raises(ValueError, match="OAUTH_CLIENT_SECRET.*hf_oauth: true"):
        SpaceConfig.from_env({k: v for k, v in os.environ.items() if k != "OAUTH_CLIENT_SECRET"})
    with pytest.raises(ValueError, match="SYSTEM=spaces"):  # gradio would fake the login there
        SpaceConfig.from_env({**os.environ, "SYSTEM": ""})
    with pytest.raises(ValueError, match="no HF_TOKEN secret"):
        SpaceConfig.from_env({**os.environ, "PREFERENCE_DATASET_REPO": REPO})


def test_visitors_who_have_not_signed_in_are_refused_and_hf_users_act_in_their_role(space_env):
    services = Services(settings=Settings(), chat=None, space=SpaceConfig.from_env())
    for role in ("annotator", "reviewer", "admin"):
        with pytest.raises(gr.Error, match="Sign in with Hugging Face"):
            services.require(hf_request(None), role)
    with pytest.raises(gr.Error, match="Sign in with Hugging Face"):  # a real handler, before it touches anything
        arena.api_vote(services, "some-comparison", "a", request=hf_request(None))
    assert services.require(hf_request("carl"), "annotator") == "carl"
    with pytest.raises(gr.Error, match="needs the reviewer role; carl is signed in as annotator"):
        services.require(hf_request("carl"), "reviewer")
    assert services.require(hf_request("rita"), "reviewer") == "rita"
    assert services.require(hf_request("ada"), "admin") == "ada"
    # off a Space the rules stay: no --auth-file is one local admin
    assert Services(settings=Settings(), chat=None).require(None, "admin") == "local"


def test_a_space_listens_on_every_interface_and_its_hf_login_satisfies_the_exposure_rule(space_env, tmp_path):
    from labeling.users import User

    settings = app.parse_args(["--data-dir", str(tmp_path)])
    assert (settings.host, settings.port) == ("0.0.0.0", 7860)
    space = SpaceConfig.from_env()
    app.check_exposure(settings.host, None, space)
    with pytest.raises(ValueError, match="drop --auth-file"):
        app.check_exposure(settings.host, {"ann": User("ann", "admin", "x", legacy=True)}, space)
    with gr.Blocks() as demo:
        assert isinstance(login_button(space), gr.LoginButton)
    assert demo.expects_oauth  # gradio adds its OAuth routes and session middleware

    space_env.delenv("SPACE_ID")
    assert app.parse_args(["--data-dir", str(tmp_path)]).host == "127.0.0.1"
    with pytest.raises(ValueError, match="without --auth-file"):
        app.check_exposure("0.0.0.0", None, None)
    with gr.Blocks() as demo:
        assert login_button(None) is None
    assert not demo.expects_oauth


class FakeHub:
    """A folder playing the Hub: HfApi's network methods, replaced; everything above them is real."""

    def __init__(self, root: Path, monkeypatch, fail_with: Exception | None = None):
        self.root, self.fail_with, self.commits, self.downloads = root, fail_with, 0, 0
        hub = self

        def create_repo(api, repo_id, *, repo_type=None, private=None, exist_ok=False, **_):
            if hub.fail_with is not None:
                raise hub.fail_with
            assert repo_type == "dataset" and private is True and exist_ok
            (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(api, repo_id, operations, *, repo_type=None, **_):
            assert repo_type == "dataset"
            for op in operations:
                target = hub.root / repo_id / op.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as source:
                    target.write_bytes(source.read())
            hub.commits += 1

        def snapshot_download(api, repo_id, *, repo_type=None, local_dir=None, allow_patterns=None, **_):
            assert repo_type == "dataset"
            hub.downloads += 1
            repo = hub.root / repo_id
            for path in repo.rglob("*"):
                name = path.relative_to(repo).as_posix()
                if path.is_file() and fnmatch.fnmatch(name, allow_patterns):
                    (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, Path(local_dir) / name)
            return str(local_dir)

        for name, fn in (("create_repo", create_repo), ("create_commit", create_commit),
                         ("snapshot_download", snapshot_download)):
            monkeypatch.setattr(HfApi, name, fn)

    def segments(self) -> list[Path]:
        return journal.segments(self.root / REPO / PATH_IN_REPO)


def test_votes_go_to_the_dataset_repo_and_a_space_with_a_new_disk_gets_every_one_back_once(space_env, tmp_path, capsys):
    space_env.setenv("PREFERENCE_DATASET_REPO", REPO)
    space_env.setenv("HF_TOKEN", "hf_test_token")
    hub = FakeHub(tmp_path / "hub", space_env)
    data_dir = tmp_path / "data"
    journal_dir = journal.default_dir(data_dir)

    # the app's start on a new Space, then votes, then the scheduler's upload
    space = SpaceConfig.from_env()
    store = app.open_store(data_dir, journal_dir)
    app.sync_journal(store, journal_dir, space)
    assert hub.downloads == 1 and not journal.segments(journal_dir)  # a new repo: nothing to restore
    uploader = app.start_uploads(space, journal_dir)
    fill(store)
    before = content(store)
    store.close()
    uploader.trigger().result()
    uploader.stop()
    assert uploader.last_error is None
    local = journal.segments(journal_dir)
    assert [p.name for p in hub.segments()] == [p.name for p in local]
    assert [p.read_bytes() for p in hub.segments()] == [p.read_bytes() for p in local]

    # the Space restarts on a new disk: no DB, no journal; the real start-up downloads and restores
    lose_db(data_dir)
    shutil.rmtree(journal_dir)
    never_loaded = str(tmp_path / "never-loaded")  # the start stops at the model, after the restore
    capsys.readouterr()
    assert app.main(["--data-dir", str(data_dir), "--base-model", never_loaded]) == 2
    out = capsys.readouterr().out
    assert "downloaded 1 journal segments from the dataset repo team/preference-votes" in out
    assert "restored 3 prompts, 6 comparisons, 6 votes, 1 promotions" in out
    with Store(data_dir) as restored:
        assert content(restored) == before  # every vote, once, with its id, choice and time

    # a later start with the DB in place downloads nothing and adds nothing
    assert app.main(["--data-dir", str(data_dir), "--base-model", never_loaded]) == 2
    assert hub.downloads == 2 and "downloaded" not in capsys.readouterr().out
    with Store(data_dir) as restored:
        assert content(restored) == before


def test_a_wrong_token_or_repo_stops_the_start_with_one_line(space_env, tmp_path, capsys):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    space_env.setenv("PREFERENCE_DATASET_REPO", REPO)
    space_env.setenv("HF_TOKEN", "hf_wrong")
    response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    FakeHub(tmp_path / "hub", space_env, fail_with=HfHubHTTPError("401 Unauthorized: Invalid credentials", response=response))
    assert app.main(["--data-dir", str(tmp_path / "data"), "--base-model", str(tmp_path / "never-loaded")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot use the dataset repo team/preference-votes with the HF_TOKEN")
    assert "401 Unauthorized" in err[0]

    space_env.delenv("HF_TOKEN")  # a repo without a token: refused before anything opens
    assert app.main(["--data-dir", str(tmp_path / "data"), "--base-model", str(tmp_path / "never-loaded")]) == 2
    assert "no HF_TOKEN secret" in capsys.readouterr().err


# on a Space gradio also starts its hot-reload watcher, which wants the `spaces` package a real Space has
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_identity_through_the_real_app_reads_gradios_signed_oauth_session(space_env):
    """A launched gradio app with the LoginButton (so gradio's own session middleware), called through
    gradio_client with the session cookie gradio would have set after Sign in with Hugging Face."""
    import base64
    import hashlib
    import json

    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from itsdangerous import TimestampSigner

    from ui.services import bind

    def whoami(services: Services, request: gr.Request = None) -> str:
        return f"{services.require(request, 'annotator')}:{services.role_of(request)}"

    services = Services(settings=Settings(), chat=None, space=SpaceConfig.from_env())
    with gr.Blocks() as demo:
        login_button(services.space)
        out = gr.Textbox()
        gr.Button().click(bind(whoami, services), None, out, api_name="whoami")
    demo.queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        # starlette's SessionMiddleware cookie, keyed as gradio keys it from the Space's OAuth secret
        secret = hashlib.sha256((SPACE_ENV["OAUTH_CLIENT_SECRET"] + "-v4").encode()).hexdigest()

        def cookie(user: str, key: str = secret) -> str:
            session = {"oauth_info": {"expires_at": time.time() + 3600, "userinfo": {"preferred_username": user}}}
            return TimestampSigner(key).sign(base64.b64encode(json.dumps(session).encode())).decode()

        url = demo.local_url
        assert Client(url, headers={"Cookie": f"session={cookie('rita')}"}, verbose=False).predict(
            api_name="/whoami") == "rita:reviewer"
        assert Client(url, headers={"Cookie": f"session={cookie('carl')}"}, verbose=False).predict(
            api_name="/whoami") == "carl:annotator"
        for headers in ({}, {"Cookie": f"session={cookie('ada', key='guessed')}"}):  # none, or forged
            with pytest.raises(AppError, match="Sign in with Hugging Face"):
                Client(url, headers=headers, verbose=False).predict(api_name="/whoami")
    finally:
        demo.close()
