"""Every malformed input gets one clear line naming the file and the line or field; no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "malformed"

# file -> (location the message must start with, words the message must contain)
DATA_CASES = {
    "broken_array.json": (":4:", "invalid JSON"),
    "trailing_comma.json": (":3:", "invalid JSON"),
    "extra_data.json": (":4:", "extra data after the closing ']'"),
    "not_array.json": (":1:", "expected a JSON array"),
    "empty.json": (":", "empty file"),
    "missing_instruction.json": (":3:", "field 'instruction': required field is missing"),
    "wrong_type_input.json": (":2:", "field 'input': expected a string, got array"),
    "bad_line.jsonl": (":3:", "invalid JSON"),
    "missing_output.jsonl": (":2:", "field 'output': required field is missing"),
    "wrong_type_output.jsonl": (":1:", "field 'output': expected a string, got number"),
    "empty_instruction.jsonl": (":2:", "field 'instruction': must not be empty"),
    "empty.jsonl": (":", "empty file"),
    "not_utf8.jsonl": (":2:", "not valid UTF-8"),
    "record_not_object.jsonl": (":1:", "expected an object"),
    "bad_metadata.jsonl": (":1:", "field 'metadata': expected an object"),
    "turns_out_of_order.jsonl": (":1:", "field 'messages[2]': expected a user turn"),
    "bad_role.jsonl": (":1:", "field 'conversations[0].from': unknown role"),
    "seed_bad_instances.jsonl": (":1:", "field 'instances': expected a non-empty array"),
    "whitespace_only.csv": (":", "empty file"),
    "missing_column.csv": (":1:", "missing column 'instruction'"),
    "ragged.csv": (":3:", "row has 3 fields but the header has 2"),
    "corrupt.parquet": (":", "not a readable Parquet file"),
    "unknown_suffix.txt": (":", "unknown file type '.txt'"),
}
CONFIG_CASES = {
    "bad_yaml.yaml": (":3:", "invalid YAML"),
    "unknown_key.yaml": (":", "field 'max_charz': unknown setting"),
    "wrong_type.yaml": (":", "field 'max_chars': Input should be a valid integer"),
    "yaml_not_mapping.yaml": (":", "expected a mapping of settings"),
    "bad_rule_name.yaml": (":", "field 'disable': unknown rule(s) no_such_rule"),
}


def test_corpus_is_complete():
    on_disk = {p.name for p in CORPUS.iterdir()}
    assert on_disk == set(DATA_CASES) | set(CONFIG_CASES)
    assert len(on_disk) >= 20


def _assert_one_line(text: str, name: str, where: str, words: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    line = lines[0].removeprefix("pacos: error: ")
    assert line.startswith(str(CORPUS / name) + where), line
    assert words in line, line
    assert "Traceback" not in text


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_validate_reports_one_line(cli, name):
    where, words = DATA_CASES[name]
    result = cli("data", "validate", CORPUS / name)
    assert result.code == 1
    _assert_one_line(result.out, name, where, words)
    assert result.err.strip() == "1 problem(s) found"


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_reading_commands_fail_with_one_line(cli, tmp_path, name):
    where, words = DATA_CASES[name]
    out = tmp_path / "out.jsonl"
    result = cli("data", "convert", CORPUS / name, out)
    assert result.code == 1
    assert result.out == ""
    _assert_one_line(result.err, name, where, words)
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_bad_config_reports_one_line(cli, tmp_path, name):
    where, words = CONFIG_CASES[name]
    result = cli("data", "clean", "seed-tasks-zh", "--out", tmp_path / "o.jsonl", "--config", CORPUS / name)
    assert result.code == 1
    _assert_one_line(result.err, name, where, words)


def test_validate_reports_every_problem_across_files(cli):
    result = cli(
        "data",
        "validate",
        CORPUS / "bad_line.jsonl",
        CORPUS / "missing_output.jsonl",
        CORPUS / "not_utf8.jsonl",
        "seed-tasks-zh",
    )
    assert result.code == 1
    assert len(result.out.splitlines()) == 4  # three problems and one OK line
    assert "seed-tasks-zh: 40 records OK" in result.out
    assert result.err.strip() == "3 problem(s) found"


def test_real_process_prints_no_traceback(tmp_path):
    """The installed entry point, in its own process: exit 1 and one stderr line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacos",
            "data",
            "clean",
            str(CORPUS / "broken_array.json"),
            "--out",
            str(tmp_path / "o.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "broken_array.json:4: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_file_and_bad_override(cli, tmp_path):
    result = cli("data", "validate", tmp_path / "nope.jsonl")
    assert result.code == 1 and "nope.jsonl: no such file or directory" in result.out
    result = cli("data", "clean", "seed-tasks-zh", "--out", tmp_path / "o.jsonl", "--set", "max_chars=-5")
    assert result.code == 1 and "field 'max_chars': must be a positive number" in result.err
    result = cli("data", "clean", "seed-tasks-zh", "--out", tmp_path / "o.jsonl", "--set", "novalue")
    assert result.code == 1 and "expected KEY=VALUE" in result.err
