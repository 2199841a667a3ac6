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


@pytest.mark.parametrize(("setting", "kernelized"), [(None, False), ("YES", True)])
def test_hub_kernels_are_off_unless_asked_for(tiny_llama, setting, kernelized):
    """transformers kernelizes by default (code fetched from the Hub on GPUs); pacos loads without."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    if setting:
        env["USE_HUB_KERNELS"] = setting
    code = f"from pacos.models import load_model; print(load_model({str(tiny_llama)!r}).use_kernels)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip().splitlines()[-1] == str(kernelized)
