from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pacos.data.io import read_records, write_records
from pacos.data.seeds import load_seed_tasks
from pacos.errors import PacosError

from .conftest import write_jsonl

RECORDS = [
    {"id": "a1", "instruction": "Name a colour.", "input": "", "output": "Blue."},
    {
        "id": "a2",
        "instruction": "把下面的句子翻译成英文。",
        "input": "今天天气很好。",
        "output": "The weather is nice today.",
        "source": "zh",
        "metadata": {"topic": "translation", "difficulty": 1},
    },
    {"instruction": 'Quote this: "a, b"\nwith a newline', "input": "x,y\tz", "output": '"a, b"'},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv", ".parquet", ""])
def test_round_trip_every_format(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"  # no suffix: a saved Hugging Face dataset directory
    write_records(RECORDS, path)
    back = read_records(path)
    assert len(back) == 3
    for original, loaded in zip(RECORDS, back):
        for key, value in original.items():
            assert loaded[key] == value, (suffix, key)
        assert loaded["input"] == original["input"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_input_defaults_to_empty_and_null_input_is_empty(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}],
    )
    assert [r["input"] for r in read_records(path)] == ["", ""]


def test_unknown_fields_are_kept(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"instruction": "a", "output": "b", "text": "rendered", "score": 3}]
    )
    out = tmp_path / "o.json"
    write_records(read_records(path), out)
    assert json.loads(out.read_text())[0] == {
        "instruction": "a",
        "input": "",
        "output": "b",
        "text": "rendered",
        "score": 3,
    }


def test_json_lines_saved_as_json_and_single_object(tmp_path):
    lines = tmp_path / "lines.json"
    write_jsonl(lines, RECORDS[:2])
    assert [r["id"] for r in read_records(lines)] == ["a1", "a2"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(RECORDS[0], indent=2))
    assert read_records(single)[0]["output"] == "Blue."


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff".encode() + json.dumps(RECORDS[0]).encode() + b"\n")
    assert read_records(path)[0]["id"] == "a1"


def test_openai_messages_and_sharegpt_conversations(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."},
                ]
            },
            {
                "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}],
                "id": 7,
            },
        ],
    )
    first, second = read_records(path)
    assert first == {
        "instruction": "Hi?",
        "input": "",
        "output": "Hello.",
        "metadata": {"system": "Be brief."},
    }
    assert second == {"id": 7, "instruction": "你好", "input": "", "output": "你好！"}


def test_prompt_only_chat_needs_no_output_when_allowed(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "Hi?"}]}])
    assert read_records(path, require_output=False)[0] == {"instruction": "Hi?", "input": ""}
    with pytest.raises(PacosError, match="field 'output': required field is missing"):
        read_records(path)


def test_seed_tasks_become_records_one_per_instance(tmp_path):
    path = write_jsonl(
        tmp_path / "seed.jsonl",
        [
            {
                "id": "t1",
                "name": "colours",
                "instruction": "Name a colour.",
                "is_classification": False,
                "instances": [{"input": "", "output": "Blue."}, {"input": "warm", "output": "Red."}],
            }
        ],
    )
    records = read_records(path)
    assert [(r["id"], r["input"], r["output"]) for r in records] == [
        ("t1-0", "", "Blue."),
        ("t1-1", "warm", "Red."),
    ]
    assert records[0]["metadata"] == {"name": "colours", "is_classification": False}


def test_builtin_seed_tasks_load_in_both_languages():
    en, zh = read_records("seed-tasks-en"), read_records("seed-tasks-zh")
    assert len(read_records("seed-tasks")) == len(en) + len(zh)
    assert len(load_seed_tasks("en")) == len(en)


def test_saved_hf_dataset_dict_and_split_suffix(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"instruction": "a", "input": "", "output": "b"}]),
            "test": datasets.Dataset.from_list([{"instruction": "c", "input": "", "output": "d"}] * 2),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [r["output"] for r in read_records(tmp_path / "dd")] == ["b"]  # 'train' by default
    assert len(read_records(f"{tmp_path / 'dd'}:test")) == 2
    with pytest.raises(PacosError, match="splits: train, test"):
        read_records(f"{tmp_path / 'dd'}:validation")


def test_hub_loader_path_on_a_local_data_folder(tmp_path):
    """`load_dataset` is the same call that fetches hub ids; here it reads a local folder offline."""
    from pacos.data.io import load_hf_dataset

    folder = tmp_path / "hubish"
    folder.mkdir()
    write_records(RECORDS, folder / "train.parquet")
    dataset = load_hf_dataset(str(folder))
    assert dataset.num_rows == 3 and dataset[1]["instruction"] == RECORDS[1]["instruction"]


def test_unreachable_hub_id_is_one_line_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # fail fast: no network here
    proc = subprocess.run(
        [sys.executable, "-m", "pacos", "data", "validate", "no-such-owner/no-such-dataset"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout.startswith(
        "no-such-owner/no-such-dataset: not a local file, and loading it as a Hugging Face dataset failed: "
    )
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr


def test_write_is_atomic_when_it_fails(tmp_path):
    path = tmp_path / "out.json"
    write_records(RECORDS[:1], path)
    before = path.read_bytes()
    with pytest.raises(PacosError, match=r"out\.json: cannot write json"):
        write_records([{"instruction": "x", "input": "", "output": object()}], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_convert_command(cli, tmp_path):
    result = cli("data", "convert", "seed-tasks-zh", tmp_path / "zh.parquet")
    assert result.code == 0 and "wrote 40 records" in result.out
    assert len(read_records(tmp_path / "zh.parquet")) == 40


def test_written_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_records(RECORDS, tmp_path / "out.jsonl")
        directory = write_records(RECORDS, tmp_path / "saved")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert directory.stat().st_mode & 0o777 == 0o755
