"""Stages that are skipped when their inputs did not change, and resumed when they were killed.

Each stage owns `OUT/<name>/` and a `stage.json` there: the digest of its inputs (settings and the content
of the files it reads), and whether it finished. On a rerun a finished stage with the same digest is
skipped; an unfinished one with the same digest runs again in place, so its own resume logic (generation's
append-only logs, training's checkpoints, the answer cache) picks up where it stopped; a stage whose
inputs changed starts from an empty directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacos.errors import PacosError
from pacos.fileio import write_json

MARKER = "stage.json"


def file_digest(*paths: Path) -> str:
    """Content digest of files (or every file under a directory), independent of paths and times."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def run_stage(
    out_dir: Path, name: str, inputs: dict[str, Any], work: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """Run `work(stage_dir)` unless a finished run with the same inputs is there; returns its result
    (a JSON-able dict, kept in stage.json so a skipped stage still reports it)."""
    stage_dir = out_dir / name
    digest = inputs_digest(inputs)
    marker = _read_marker(stage_dir / MARKER)
    if marker and marker.get("inputs_digest") == digest and marker.get("finished"):
        print(f"[{name}] inputs unchanged: skipped (delete {stage_dir} to redo it)", flush=True)
        return marker["result"]
    if stage_dir.exists() and not (marker and marker.get("inputs_digest") == digest):
        if marker is None and any(stage_dir.iterdir()):
            raise PacosError(
                f"{stage_dir} exists but was not written by this stage (no {MARKER}); move it away or "
                "choose another --out-dir"
            )
        shutil.rmtree(stage_dir)  # outputs made from other inputs
    elif marker:
        print(f"[{name}] resuming the unfinished stage", flush=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / MARKER, {"inputs_digest": digest, "inputs": inputs, "finished": False})
    started = time.monotonic()
    result = work(stage_dir)
    seconds = round(time.monotonic() - started, 1)
    write_json(stage_dir / MARKER, {"inputs_digest": digest, "inputs": inputs, "finished": True,
                                    "seconds": seconds, "result": result})  # fmt: skip
    return result
