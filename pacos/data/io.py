"""Read and write instruction records: Alpaca JSON, JSONL, CSV/TSV, Parquet and Hugging Face datasets.

Every problem is reported as `file:line: message` (text formats) or `file: record N: message`, and
reading never stops at a traceback. Writes are atomic: the output is either the old file or the new one.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacos.data.records import Record, RecordError, normalize, ordered
from pacos.errors import PacosError, first_line
from pacos.fileio import atomic_dir, atomic_open

FORMATS = ("json", "jsonl", "csv", "tsv", "parquet", "hf")
_SUFFIX_FORMATS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")
_WS = re.compile(r"\s*")
# CSV, TSV, Parquet and HF datasets hold flat columns: nested values travel as JSON text.
_NESTED_COLUMNS = ("metadata",)
_OPTIONAL_COLUMNS = ("id", "source", "metadata")  # an empty CSV cell here means "absent"


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Row:
    where: str
    raw: Any


def detect_format(path: str | Path) -> str:
    """The format of a path, from its suffix; a directory is a saved Hugging Face dataset."""
    p = Path(path)
    if p.is_dir() or p.suffix == "":
        return "hf"
    fmt = _SUFFIX_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise PacosError(
            f"{path}: unknown file type '{p.suffix}' (expected one of: "
            f"{', '.join(sorted(_SUFFIX_FORMATS))}, or a dataset directory)"
        )
    return fmt


class _Lines:
    """Maps character offsets to 1-based line numbers."""

    def __init__(self, text: str):
        self.starts = [m.end() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) + 1


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise PacosError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
            "re-save the file as UTF-8"
        ) from None


def _rows_json(path: Path, text: str) -> Iterator[Row | Problem]:
    start = _WS.match(text).end()
    if start == len(text):
        yield Problem(str(path), "empty file (no records)")
        return
    if text[start] == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                yield Problem(f"{path}:{e.lineno}", f"invalid JSON: {e.msg} (column {e.colno})")
                return
            yield from _rows_jsonl(path, text)  # JSON Lines saved as .json
            return
        yield Row(f"{path}:{_Lines(text).line(start)}", whole)
        return
    if text[start] != "[":
        yield Problem(
            f"{path}:{_Lines(text).line(start)}", f"expected a JSON array of records, found {text[start]!r}"
        )
        return
    lines = _Lines(text)
    decoder = json.JSONDecoder()
    pos = _WS.match(text, start + 1).end()
    if text[pos : pos + 1] == "]":
        yield Problem(str(path), "the JSON array is empty (no records)")
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield Problem(f"{path}:{e.lineno}", f"invalid JSON: {e.msg} (column {e.colno})")
            return
        yield Row(f"{path}:{lines.line(pos)}", value)
        pos = _WS.match(text, end).end()
        nxt = text[pos : pos + 1]
        if nxt == ",":
            pos = _WS.match(text, pos + 1).end()
            continue
        if nxt == "]":
            rest = _WS.match(text, pos + 1).end()
            if rest != len(text):
                yield Problem(f"{path}:{lines.line(rest)}", "invalid JSON: extra data after the closing ']'")
            return
        what = "end of file" if not nxt else repr(nxt)
        yield Problem(f"{path}:{lines.line(pos)}", f"invalid JSON: expected ',' or ']' but found {what}")
        return


def _rows_jsonl(path: Path, text: str) -> Iterator[Row | Problem]:
    found = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        found = True
        try:
            yield Row(f"{path}:{number}", json.loads(line))
        except json.JSONDecodeError as e:
            yield Problem(f"{path}:{number}", f"invalid JSON: {e.msg} (column {e.colno})")
    if not found:
        yield Problem(str(path), "empty file (no records)")


def _decode_nested(row: dict[str, Any]) -> dict[str, Any]:
    for key in _NESTED_COLUMNS:
        value = row.get(key)
        if isinstance(value, str):
            if not value.strip():
                row[key] = None
            elif value.lstrip().startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):  # else left as a string: validation names it
                    row[key] = json.loads(value)
    return row


def _rows_csv(path: Path, text: str, delimiter: str) -> Iterator[Row | Problem]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as e:
        yield Problem(f"{path}:{reader.line_num}", f"invalid CSV: {e}")
        return
    if header is None or not any(h.strip() for h in header):
        yield Problem(str(path), "empty file (no header row)")
        return
    header = [h.strip() for h in header]
    if "instruction" not in header and "messages" not in header:
        yield Problem(f"{path}:1", f"missing column 'instruction' (columns: {', '.join(header)})")
        return
    found = False
    while True:
        first_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield Problem(f"{path}:{reader.line_num}", f"invalid CSV: {e}")
            return
        if not cells:
            continue
        found = True
        if len(cells) != len(header):
            yield Problem(
                f"{path}:{first_line}", f"row has {len(cells)} fields but the header has {len(header)}"
            )
            continue
        row = {k: v for k, v in zip(header, cells) if v != "" or k not in _OPTIONAL_COLUMNS}
        yield Row(f"{path}:{first_line}", _decode_nested(row))
    if not found:
        yield Problem(str(path), "no records after the header row")


def _rows_table(where: str, rows: Iterable[dict[str, Any]]) -> Iterator[Row | Problem]:
    found = False
    for index, row in enumerate(rows, start=1):
        found = True
        yield Row(f"{where}: record {index}", _decode_nested(dict(row)))
    if not found:
        yield Problem(where, "no records")


def _rows_parquet(path: Path) -> Iterator[Row | Problem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        yield Problem(str(path), f"not a readable Parquet file: {first_line(e)}")
        return
    yield from _rows_table(str(path), table.to_pylist())


def _split_name(spec: str) -> tuple[str, str | None]:
    name, sep, split = spec.rpartition(":")
    return (name, split) if sep and "/" not in split and name else (spec, None)


def _pick_split(dataset: Any, split: str | None, where: str) -> Any:
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        return dataset
    if split is None:
        split = "train" if "train" in dataset else (next(iter(dataset)) if len(dataset) == 1 else None)
    if split not in dataset:
        raise PacosError(f"{where}: choose a split with NAME:SPLIT (splits: {', '.join(dataset)})")
    return dataset[split]


def load_hf_dataset(spec: str) -> Any:
    """A Hugging Face dataset from a saved directory (`save_to_disk`) or `datasets.load_dataset` (hub id,
    or a local folder of data files), with an optional `:split` suffix."""
    import datasets

    name, split = _split_name(spec)
    path = Path(name)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        try:
            return _pick_split(datasets.load_from_disk(str(path)), split, spec)
        except (OSError, ValueError, FileNotFoundError) as e:
            raise PacosError(f"{spec}: cannot load the saved dataset: {e}") from None
    try:
        return _pick_split(datasets.load_dataset(name, split=split), None, spec)
    except PacosError:
        raise
    except Exception as e:  # network, auth and missing-dataset errors all land here
        raise PacosError(
            f"{spec}: not a local file, and loading it as a Hugging Face dataset failed: {first_line(e)}"
        ) from None


def iter_rows(source: str | Path) -> Iterator[Row | Problem]:
    """Raw rows of a file, dataset directory, hub id or built-in dataset name, with their locations."""
    from pacos.data.seeds import BUILTIN_DATASETS, builtin_paths

    spec = str(source)
    if spec in BUILTIN_DATASETS:
        for path in builtin_paths(spec):
            yield from iter_rows(path)
        return
    path = Path(spec)
    if not path.exists():
        if Path(_split_name(spec)[0]).is_dir():  # a saved dataset with a :split suffix
            yield from _rows_table(spec, load_hf_dataset(spec))
            return
        if _HUB_ID.match(spec) and not path.suffix:
            yield from _rows_table(spec, load_hf_dataset(spec))
            return
        yield Problem(spec, "no such file or directory")
        return
    fmt = detect_format(path)
    if fmt == "hf":
        yield from _rows_table(spec, load_hf_dataset(spec))
    elif fmt == "parquet":
        yield from _rows_parquet(path)
    else:
        text = _read_text(path)
        if fmt == "json":
            yield from _rows_json(path, text)
        elif fmt == "jsonl":
            yield from _rows_jsonl(path, text)
        else:
            yield from _rows_csv(path, text, "\t" if fmt == "tsv" else ",")


def scan(
    source: str | Path, *, require_output: bool = True, allow_empty: bool = False
) -> Iterator[tuple[str, list[Record]] | Problem]:
    """Like `iter_rows`, but each row is converted into records; bad rows become Problems."""
    for item in iter_rows(source):
        if isinstance(item, Problem):
            yield item
            continue
        try:
            yield item.where, normalize(item.raw, require_output=require_output, allow_empty=allow_empty)
        except RecordError as e:
            for problem in e.problems:
                yield Problem(item.where, problem)


def read_records(
    source: str | Path, *, require_output: bool = True, allow_empty: bool = False
) -> list[Record]:
    """All records of a source; the first problem raises a one-line PacosError."""
    records: list[Record] = []
    for item in scan(source, require_output=require_output, allow_empty=allow_empty):
        if isinstance(item, Problem):
            raise PacosError(str(item))
        records.extend(item[1])
    return records


def _flat(record: Record) -> dict[str, Any]:
    return {
        k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
        for k, v in ordered(record).items()
    }


def _columns(records: list[Record]) -> list[str]:
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(ordered(record)))
    return list(columns)


def _column_table(records: list[Record]) -> dict[str, list[Any]]:
    """Records as columns over the union of their keys (missing values are None)."""
    flat = [_flat(r) for r in records]
    return {c: [row.get(c) for row in flat] for c in _columns(records)}


def write_records(records: list[Record], dest: str | Path, fmt: str | None = None) -> Path:
    """Write records atomically in the format named by `fmt` or by the destination's suffix."""
    dest = Path(dest)
    fmt = fmt or detect_format(dest)
    if fmt not in FORMATS:
        raise PacosError(f"unknown format '{fmt}' (expected one of: {', '.join(FORMATS)})")
    try:
        if fmt == "json":
            with atomic_open(dest) as f:
                json.dump([ordered(r) for r in records], f, ensure_ascii=False, indent=2)
                f.write("\n")
        elif fmt == "jsonl":
            with atomic_open(dest) as f:
                for r in records:
                    f.write(json.dumps(ordered(r), ensure_ascii=False) + "\n")
        elif fmt in ("csv", "tsv"):
            columns = _columns(records)
            with atomic_open(dest) as f:
                writer = csv.DictWriter(f, columns, delimiter="\t" if fmt == "tsv" else ",")
                writer.writeheader()
                writer.writerows(_flat(r) for r in records)
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pydict(_column_table(records))
            with atomic_open(dest, "wb") as f:
                pq.write_table(table, f)
        else:
            import datasets

            with atomic_dir(dest) as tmp:
                datasets.Dataset.from_dict(_column_table(records)).save_to_disk(str(tmp))
    except (OSError, ValueError, TypeError) as e:
        if isinstance(e, PacosError):
            raise
        raise PacosError(f"{dest}: cannot write {fmt}: {first_line(e)}") from None
    return dest
