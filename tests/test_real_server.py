"""simulate and contrast of the tiny profile through `backend: openai` against a real server.

The server is `transformers serve` running the embedded SmolLM2 from its local converted folder
(python -m music.chat.serve), on 127.0.0.1, offline. The test kills it with SIGKILL in the middle of
the simulate stage, restarts it on the same port and reruns the stage: every reply finished before
the kill comes from the response cache (the restarted server only sees the missing requests), the
outputs validate, and a third run and the contrast rerun generate nothing. The tiny profile with half its
seeds (about 40 requests): a few minutes on 2 cores, most of it the 135M model's prefill.

The same server with one setting wrong (the served model name, a key variable that is not set, a field
the server rejects) fails the first stage that calls it, simulate, with the server's own message, and
writes nothing a later stage could train on (a few requests each).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from music.config import EMBEDDED_MODEL, Params, Paths, from_dict

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `python -m music.chat.serve` process in its own session (killed by its own id only)."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def ensure_started(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def start(self) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "2",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("HF_TOKEN", None)
        self.fh = open(self.log, "ab")
        self.offset = self.log.stat().st_size  # this start's part of the log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "music.chat.serve", "--port", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"server did not answer /health within {START_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        # SIGKILL: transformers serve does not exit on SIGTERM while it is generating
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the process group of the server we started
            self.proc.wait(timeout=30)
        if self.proc:
            self.fh.close()

    def completions_served(self) -> int:
        """Chat completions answered since the last start (uvicorn's access log)."""
        return (
            self.log.read_bytes()[self.offset :]
            .decode(errors="replace")
            .count('"POST /v1/chat/completions HTTP/1.1" 200')
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers.utils.import_utils import is_serve_available

    assert is_serve_available(), "the real-server test needs requirements/serve.txt installed (make install does it)"
    from music.models import resolve_model_path

    root = tmp_path_factory.mktemp("real_server")
    model_path = resolve_model_path(EMBEDDED_MODEL)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    raw = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    raw["paths"] = {name: str(root / name) for name in Paths.__dataclass_fields__}
    raw["seed"].update(n_train=2, n_eval=1)  # half the tiny profile's seeds: about 40 requests, not 80 (make test time)
    raw["simulate"]["max_failed_share"] = 1.0  # the kill below fails conversations on purpose
    # two training conversations through the served 135M model may keep no MUSIC pair (resampled requests
    # unusable): this test checks the plumbing, not the yield
    raw["contrast"]["min_music_train_pairs"] = 0
    served = {
        "backend": "openai",
        "model": model_path,
        "base_urls": [url],
        "api_key_env": "",
        "max_concurrency": 2,
        "timeout_s": 120,
        "max_retries": 1,
        "backoff_s": 0.2,
    }
    for section, role in (("simulate", "user"), ("simulate", "assistant"), ("contrast", "contrast")):
        # transformers serve answers 422 to fields outside OpenAI's API, such as repetition_penalty
        # (vLLM and SGLang accept it): the served roles sample without it
        raw[section][role] = {**raw[section][role], **served, "repetition_penalty": 1.0}
    P = from_dict(Params, raw, "tiny (served)")
    from music.stages.seed import run as run_seed

    run_seed(P)
    server = Server(port, root / "server.log")
    yield {"P": P, "server": server, "root": root, "raw": raw}
    server.kill()


def cached(P) -> int:
    from music.chat.cache import ResponseCache

    cache = ResponseCache.in_dir(P.paths.cache)
    try:
        return len(cache)
    finally:
        cache.close()


def backends(P):
    from music.chat import make_chat

    return make_chat(P.simulate.user, P.paths.cache), make_chat(P.simulate.assistant, P.paths.cache)


def conversations(P) -> list[dict]:
    from music.store import load_records

    return [r for split in ("train", "eval") for r in load_records(Path(P.paths.conversations) / split)]


def test_simulate_survives_a_server_kill_and_contrast_runs(setup):
    from music.schema import PreferencePair, validate_conversation
    from music.stages.contrast import run as run_contrast
    from music.stages.simulate import run as run_simulate
    from music.store import load_records

    P, server = setup["P"], setup["server"]
    server.start()
    (P_user, P_asst) = backends(P)
    result: dict = {}
    stage = threading.Thread(target=lambda: result.update(run_simulate(P, backends=(P_user, P_asst))))
    stage.start()
    while cached(P) < 3 and stage.is_alive():  # a few replies are in: kill the server mid-stage
        time.sleep(0.2)
    server.kill()
    stage.join(timeout=600)
    assert not stage.is_alive()
    failed = sum(s["failed"] for s in result.values())
    assert failed > 0, f"the kill came too late to interrupt the stage: {result}"
    done_before = cached(P)
    assert done_before >= 3

    server.start()  # same port, same base_urls: the same cache keys
    user, asst = backends(P)
    summary = run_simulate(P, backends=(user, asst))
    assert all(s["failed"] == 0 for s in summary.values()), summary
    generated = user.units_generated + asst.units_generated
    assert generated == cached(P) - done_before  # only what was missing was asked for
    assert server.completions_served() == generated  # ...and the restarted server saw exactly that
    records = conversations(P)
    assert len(records) == P.seed.n_train + P.seed.n_eval
    for r in records:
        msgs = validate_conversation(
            r["messages"], source="served conversations", record=r["seed_id"], must_end_with="assistant"
        )
        assert r["failure"] is None and sum(m["role"] == "user" for m in msgs) == r["context_turns"] + P.simulate.turns
        assert r["models"]["user"].startswith("openai:")

    again_user, again_asst = backends(P)  # a rerun is served from the cache alone
    run_simulate(P, backends=(again_user, again_asst))
    assert again_user.units_generated + again_asst.units_generated == 0
    assert conversations(P) == records

    report = run_contrast(P, backends=(*backends(P), None))
    assert report["splits"]["music_train"]["candidates"] == P.seed.n_train
    pairs = {name: load_records(Path(P.paths.pairs) / name) for name in ("music_train", "d_train", "music_eval")}
    for name, recs in pairs.items():
        for rec in recs:
            PreferencePair.from_record(rec, source=name, record=rec["pair_id"])
    assert pairs["d_train"], report
    served_before = server.completions_served()
    user, asst = backends(P)
    assert run_contrast(P, backends=(user, asst, None)) == report
    assert user.units_generated + asst.units_generated == 0 and server.completions_served() == served_before
    assert {n: load_records(Path(P.paths.pairs) / n) for n in pairs} == pairs


# --- one setting wrong: the first stage that calls the server fails with the server's message --------------------


def wrong(setup, name: str, **role) -> Params:
    """The served tiny profile with simulate.user changed, writing under its own folders."""
    import copy

    raw = copy.deepcopy(setup["raw"])
    raw["paths"].update(
        conversations=str(setup["root"] / name / "conversations"), cache=str(setup["root"] / name / "cache")
    )
    raw["simulate"]["user"].update(role)
    raw["simulate"]["max_failed_share"] = 0.1
    # the user model writes turn 1 (not the seed's real next message), so the first requests sent are the failing
    # role's and the server's request count measures that role alone
    raw["simulate"]["real_next_user"] = False
    return from_dict(Params, raw, name)


def test_a_wrong_model_name_fails_simulate_with_the_servers_message(setup, tmp_path):
    """The issue's scenario, through the stage runner as DVC calls it: simulate exits 1 with the server's 400."""
    server = setup["server"]
    server.ensure_started()
    before = server.log.read_bytes().count(b"POST /v1/chat/completions")
    P = wrong(setup, "wrong_model", model="gemini-1.5-pro")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(dataclasses.asdict(P)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "music.pipeline.notebooks",
            "simulate",
            "--params",
            str(params),
            "--output-dir",
            str(tmp_path / "executed"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ServerRejected" in done.stderr and "simulate.user" in done.stderr
    assert "HTTP 400" in done.stderr and "Server is pinned to" in done.stderr and "gemini-1.5-pro" in done.stderr
    assert not Path(P.paths.conversations, "train").exists()  # nothing for contrast or train to use
    sent = server.log.read_bytes().count(b"POST /v1/chat/completions") - before
    assert 1 <= sent <= P.simulate.user.max_concurrency  # stopped at once: no retries, the rest never sent


def test_a_missing_key_variable_fails_simulate_before_any_request(setup):
    from music.chat.openai_backend import MissingApiKey
    from music.stages.simulate import run as run_simulate

    server = setup["server"]
    server.ensure_started()
    before = server.log.read_bytes().count(b"POST /v1/chat/completions")
    os.environ.pop("MUSIC_TEST_UNSET_KEY", None)
    P = wrong(setup, "missing_key", api_key_env="MUSIC_TEST_UNSET_KEY")
    with pytest.raises(MissingApiKey, match=r"simulate.user .*'MUSIC_TEST_UNSET_KEY', which is not set"):
        run_simulate(P)
    assert server.log.read_bytes().count(b"POST /v1/chat/completions") == before
    assert not Path(P.paths.conversations).exists()


def test_a_rejected_field_fails_simulate_with_the_servers_message(setup):
    from music.chat.openai_backend import ServerRejected
    from music.stages.simulate import run as run_simulate

    setup["server"].ensure_started()
    P = wrong(setup, "rejected_field", repetition_penalty=1.1)  # transformers serve answers 422 to it
    with pytest.raises(ServerRejected) as info:
        run_simulate(P)
    assert info.value.status == 422 and info.value.role == "simulate.user"
    assert "repetition_penalty" in info.value.server_message  # the server's words name the field
    assert "repetition_penalty" in str(info.value)
    assert not Path(P.paths.conversations, "train").exists()
