"""Atomic file writes (a reader or a killed process never sees a half-written file), and append-only
JSON Lines logs that a kill can cut only at their last line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pacos.errors import PacosError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool) -> None:
    # mkstemp/mkdtemp create private (0600/0700) entries; outputs get the permissions a plain open() gives.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Write to a temporary file beside `path`, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    _usual_mode(Path(tmp), directory=False)
    try:
        with open(
            tmp, mode, encoding=None if "b" in mode else encoding, newline="" if "b" not in mode else None
        ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Pretty, UTF-8 (Chinese stays readable) JSON, written atomically."""
    with atomic_open(path) as f:
        json.dump(payload, f, ensure_ascii=False, indent=2)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a temporary directory beside `path`, then swap it in place of `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _usual_mode(tmp, directory=True)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Write files into a temporary directory, then move each into `directory` (which may hold other
    files, such as checkpoints, that must stay). Every file appears whole or not at all."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming.", dir=directory))
    try:
        yield tmp
        for item in tmp.iterdir():
            if item.is_dir():
                shutil.rmtree(directory / item.name, ignore_errors=True)
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_jsonl_repairing(path: Path) -> list[dict[str, Any]]:
    """Rows of an append-only file; a last line cut short by a kill is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise PacosError(f"{path}:{number}: not valid JSON (the file was edited by hand?)") from None
    if end < len(data):  # the kill came mid-line: that line was never complete, so never counted
        with open(path, "r+b") as f:
            f.truncate(end)
    return rows


class AppendLog:
    """An append-only JSON Lines file whose every line is on disk before the next step."""

    def __init__(self, path: Path) -> None:
        self.file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, row: dict[str, Any] | str) -> None:
        self.file.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class KeyedCache:
    """JSON values by key on disk (append-only JSON Lines), so an interrupted or repeated evaluation never
    computes the same answer twice; a line cut short by a kill is dropped when the file is read. Lines
    are `{"key": ..., "answer": ...}`: the field name of the answer caches written before the move."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.values = {row["key"]: row["answer"] for row in read_jsonl_repairing(self.path)}
        self.log: AppendLog | None = None

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        if self.log is None:
            self.log = AppendLog(self.path)
        self.log.write({"key": key, "answer": value})
        self.values[key] = value

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None  # a later put opens it again
