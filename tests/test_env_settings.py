"""SUBL_* numeric settings: a value subl cannot wait or retry by is one line naming the variable, read when the
backend is built, before anything is sent (SUBL_POLL_SECONDS=-1 failed after the fine-tuning jobs were created)."""
import pytest

from backends.openai_api import OpenAIBackend, RetryPolicy
from runner.env import env_number
from runner.errors import UserError
from runner.spec import HostedBackend


@pytest.mark.parametrize("name,value", [("SUBL_POLL_SECONDS", "-1"), ("SUBL_POLL_SECONDS", "nan"),
                                        ("SUBL_POLL_SECONDS", "inf"), ("SUBL_CREATE_GRACE", "-5"),
                                        ("SUBL_RETRY_INITIAL", "-5"), ("SUBL_RETRY_JITTER", "-100"),
                                        ("SUBL_HTTP_TIMEOUT", "-1"), ("SUBL_CONNECT_TIMEOUT", "0"),
                                        ("SUBL_RETRY_ATTEMPTS", "0"), ("SUBL_RETRY_ATTEMPTS", "2.5"),
                                        ("SUBL_RETRY_INITIAL", "nan"), ("SUBL_JOB_SLOT_WAIT", "soon")])
def test_a_setting_subl_cannot_use_stops_the_backend_being_built(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=rf"^{name}: expected a (whole )?number .*got '{value}'"):
        OpenAIBackend("openai", HostedBackend())


def test_good_settings_are_read_and_unset_ones_keep_their_defaults(monkeypatch):
    for name in ("SUBL_RETRY_ATTEMPTS", "SUBL_POLL_SECONDS", "SUBL_RETRY_JITTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBL_RETRY_INITIAL", "0")  # no wait between tries: allowed
    monkeypatch.setenv("SUBL_HTTP_TIMEOUT", "30")
    policy = RetryPolicy.from_env()
    assert policy.initial == 0.0 and policy.timeout == 30.0 and policy.attempts == RetryPolicy().attempts
    assert OpenAIBackend("openai", HostedBackend()).poll_seconds == 30.0
    monkeypatch.setenv("SUBL_X", "")
    assert env_number("SUBL_X", 4.0) == 4.0


def test_an_empty_subl_cache_is_the_default_and_a_file_is_refused(monkeypatch, tmp_path):
    from pathlib import Path

    from runner.env import cache_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SUBL_CACHE", "")  # it meant the current folder: the converted model went there
    assert cache_root() == Path(tmp_path) / ".cache" / "subl"
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SUBL_CACHE", str(tmp_path / "file"))
    with pytest.raises(UserError, match="SUBL_CACHE: .*file is not a folder"):
        cache_root()
