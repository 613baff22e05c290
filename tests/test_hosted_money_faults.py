"""A review of the hosted OpenAI-compatible backend's money path, against the fake server (tests/fake_openai.py):
what was paid twice, or spent, before the fixes here."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from backends.base import ModelRef, Sampling
from backends.openai_api import OpenAIBackend, RetryPolicy
from backends.paid_objects import GRACE_ENV
from runner.errors import UserError
from runner.spec import HostedBackend
from tests.fake_openai import FakeOpenAI
from tests.test_hosted import ENV, KEY, NANO, ROOT, server  # noqa: F401


def _drivers(server: FakeOpenAI, tmp_path, kind: str, outputs: list[str]) -> list[subprocess.CompletedProcess]:
    """tests.test_hosted_faults's driver, one process per outputs folder, all at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SUBL_"))}
    env.update(PYTHONPATH=str(ROOT), SUBL_CACHE=str(tmp_path / "cache"),
               **{ENV: KEY, GRACE_ENV: "0.05", "SUBL_POLL_SECONDS": "0.01"})
    procs = [subprocess.Popen([sys.executable, "-m", "tests.test_hosted_faults", kind, server.base_url,
                               str(tmp_path / out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for out in outputs]
    outs = [p.communicate(timeout=120) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outs)]


def test_two_runs_into_other_outputs_folders_pay_for_one_batch(server, tmp_path):
    """Two `subl run` of one spec into two outputs folders at once (the same stage key): each listed the files and
    batches, found nothing, and uploaded and sent the same requests in a batch of its own (fine-tuning jobs already
    met in a lock in the user's cache folder; batches did not)."""
    server.fault("/files", "slow", method="POST", seconds=0.5, times=2)
    done = _drivers(server, tmp_path, "batch", ["a", "b"])
    assert all(r.returncode == 0 for r in done), [r.stderr[-1500:] for r in done]
    assert [r.stdout for r in done] == ["10\n", "10\n"]
    assert server.paid_total() == Counter(files=1, batches=1) and server.counts.get("chat", 0) == 0


def _unreachable(url: str, monkeypatch) -> OpenAIBackend:
    monkeypatch.setenv(ENV, KEY)
    return OpenAIBackend("openai", HostedBackend(base_url=url, api_key_env=ENV),
                         retry=RetryPolicy(attempts=4, initial=0.01, max_wait=0.01, jitter=0, total=20))


@pytest.mark.parametrize("call", ["preflight", "generate"])
def test_a_malformed_base_url_is_one_line_naming_it(monkeypatch, call):
    """A typo in base_url's port: the SDK's client raised httpx's InvalidURL outside any retry or message, so
    `subl run` stopped with 'internal error: InvalidURL: Invalid port' (exit 1) at its preflight."""
    b = _unreachable("http://127.0.0.1:80O0/v1", monkeypatch)
    with pytest.raises(UserError, match=r"^backend 'openai': cannot use base_url http://127.0.0.1:80O0/v1 \(Invalid"):
        if call == "preflight":
            b.preflight([NANO], [], {NANO: 10})
        else:
            b.generate(ModelRef(NANO), ["hi"], Sampling())


def test_a_base_url_without_a_scheme_fails_at_once(monkeypatch):
    """`localhost:8000/v1` (no http://): httpx refuses the protocol before sending anything; that was retried
    as a dropped connection (about 2 minutes of backoff with the shipped policy) instead of failing at once."""
    b = _unreachable("127.0.0.1:8000/v1", monkeypatch)
    with pytest.raises(UserError) as e:
        b.generate(ModelRef(NANO), ["hi"], Sampling())
    assert "UnsupportedProtocol" in str(e.value) and "check base_url" in str(e.value)
    assert "gave up after" not in str(e.value)


def test_cutting_a_torn_line_off_the_request_cache_never_empties_it(tmp_path, monkeypatch):
    """Opening a stage's request cache after a kill cut off the torn last line by rewriting the whole file
    (Path.write_bytes: truncate to 0, then write): a second kill inside that rewrite lost every answer paid for,
    and the rerun paid for them all again. Here the rewrite is killed half way, as a kill -9 would."""
    import pathlib

    from backends.openai_api import RequestCache

    path = tmp_path / "hosted_requests.jsonl"
    path.write_text('{"key": "a", "texts": ["1"]}\n{"key": "b", "texts": ["2"]}\n{"key": "c", "te')

    def killed_half_way(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt  # the process dies here

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_bytes", killed_half_way)
        try:
            RequestCache(path)
        except KeyboardInterrupt:
            pass
    assert set(RequestCache(path).data) == {"a", "b"}
    assert path.read_text().endswith('"texts": ["2"]}\n')  # the torn line is gone


def test_subl_run_with_a_malformed_base_url_stops_in_one_line_exit_2(tmp_path):
    from tests.test_hosted import _cli, _scaled_spec

    spec = _scaled_spec(tmp_path, "http://127.0.0.1:80O0/v1")
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out")], {ENV: KEY})
    assert r.returncode == 2 and "cannot use base_url http://127.0.0.1:80O0/v1" in r.stderr, r.stderr[-1500:]
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
