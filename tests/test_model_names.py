"""What a model name means: a path that does not exist, or a hub id that cannot be fetched, is a one-line
error at once (not minutes of the hub client's retries)."""

from __future__ import annotations

import socket
import time

import pytest
from huggingface_hub import constants

from pacos.errors import PacosError
from pacos.models import resolve_model


def test_a_missing_directory_beside_an_existing_one_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(PacosError, match=r"^model 'runs/pruned': no such directory \(runs/ exists"):
        resolve_model("runs/pruned")


def test_an_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with socket.socket() as s:  # a loopback port nobody listens on: refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(
        PacosError, match=r"hub id: not in the local hub cache, and 127.0.0.1 cannot be reached"
    ):
        resolve_model("someone/some-model")
    assert time.monotonic() - started < 3
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PacosError, match="HF_HUB_OFFLINE is set"):
        resolve_model("someone/some-model")
