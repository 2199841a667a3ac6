"""`pacos export --format ollama`, model cards and `--push`.

Ollama cannot be installed here, so tests/gotemplate.py holds its Modelfile parser and the Go template
subset its TEMPLATEs use, each ported from Ollama's source. The bar: the Modelfile parses with Ollama's
rules, and its TEMPLATE renders exactly the prompt `pacos chat` sends (pacos.infer.prompting.chat_prompt),
for one turn and several, with and without a system prompt, for the Alpaca templates, a ChatML tokenizer
(SmolLM2's template, default system prompt included) and a Gemma 3 tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pacos.export.ollama import ollama_prompt
from pacos.infer.prompting import chat_prompt
from tests.gotemplate import ModelfileError, parse_modelfile, render
from tests.gotemplate import ollama_prompt as ollama_render

SYSTEM = {"role": "system", "content": "Answer like a pirate."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris.\nIt is on the Seine."},
    {"role": "user", "content": "And of Italy?"},
]
CONVERSATIONS = {
    "one turn": TURNS[:1],
    "one turn, system": [SYSTEM, *TURNS[:1]],
    "three turns": TURNS,
    "three turns, system": [SYSTEM, *TURNS],
    "chinese": [{"role": "user", "content": "你好，请介绍一下你自己。"}],
}

# SmolLM2-135M-Instruct's chat template: ChatML with a default system prompt.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def gemma3_template(separator: str = "\\n\\n") -> str:
    """Gemma 3's chat template for text content: BOS, the system prompt before the first user turn."""
    return (
        "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
        f"{{%- set first_user_prefix = messages[0]['content'] + '{separator}' -%}}"
        "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
        "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif -%}{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}"
        "{%- set role = message['role'] -%}{%- endif -%}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
    )


def with_tokenizer(src: Path, out: Path, chat_template: str | None, adds_bos: bool = True) -> Path:
    """A copy of a tiny model whose tokenizer has `chat_template` (and adds BOS or not)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    shutil.copytree(src, out)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if not adds_bos:  # as SmolLM2's tokenizer: its chat template starts every turn itself
        tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chat_models(tiny_llama, tiny_gemma, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-models")
    return {
        "chatml": with_tokenizer(tiny_llama, root / "chatml", SMOLLM2, adds_bos=False),
        "gemma": with_tokenizer(tiny_gemma, root / "gemma", gemma3_template()),
    }


def export_ollama_cli(cli, model: Path, out: Path, *args: str):
    result = cli("export", model, "--format", "ollama", "--quant", "q8_0", "--out", out, *args)
    assert result.code == 0, result.err
    return result


def gguf_adds_bos(path: Path) -> bool:
    import gguf

    return bool(gguf.GGUFReader(path).fields["tokenizer.ggml.add_bos_token"].contents())


def load_modelfile(out: Path):
    modelfile = parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))
    gguf_file = out / modelfile.one("model")
    assert gguf_file.is_file() and gguf_file.suffix == ".gguf"  # FROM is relative to the Modelfile
    return modelfile, gguf_file


def one_line_error(result) -> str:
    assert result.code == 1, (result.code, result.out, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    return result.err


# --- the Modelfile and its TEMPLATE -------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["alpaca", "alpaca-zh"])
def test_alpaca_template_renders_what_pacos_chat_sends(cli, tiny_llama, tmp_path, template):
    from transformers import AutoTokenizer

    out = tmp_path / "ollama"
    result = export_ollama_cli(cli, tiny_llama, out, "--template", template)
    assert "ollama create NAME -f" in result.out
    modelfile, gguf_file = load_modelfile(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    marker = "### Instruction:" if template == "alpaca" else "### 指令："
    assert modelfile.all("stop") == ["<eos>", f"\n{marker}"]
    assert modelfile.one("system") is None  # the preamble is in the TEMPLATE
    params = dict(modelfile.commands)
    assert params["temperature"] == "0.7" and params["num_ctx"] == "2048"  # the model's 2048 positions
    for name, conversation in CONVERSATIONS.items():
        want = chat_prompt(conversation, template, tokenizer)
        assert ollama_render(modelfile, conversation) == want, name
    # pacos puts the tokenizer's BOS before an Alpaca prompt; llama.cpp does too, as the GGUF says.
    assert tokenizer("a").input_ids[0] == tokenizer.bos_token_id and gguf_adds_bos(gguf_file)


def test_chatml_template_and_default_system_prompt(cli, chat_models, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "ollama"
    export_ollama_cli(cli, chat_models["chatml"], out)
    modelfile, gguf_file = load_modelfile(out)
    tokenizer = AutoTokenizer.from_pretrained(chat_models["chatml"])
    assert modelfile.one("system") == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert modelfile.all("stop") == ["<|im_end|>", "<|im_start|>", "<eos>"]
    for name, conversation in CONVERSATIONS.items():
        assert ollama_render(modelfile, conversation) == chat_prompt(conversation, "chat", tokenizer), name
    assert not gguf_adds_bos(gguf_file)  # neither pacos nor llama.cpp puts BOS first


def test_gemma_template_leaves_bos_to_the_gguf(cli, chat_models, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "ollama"
    export_ollama_cli(cli, chat_models["gemma"], out)
    modelfile, gguf_file = load_modelfile(out)
    tokenizer = AutoTokenizer.from_pretrained(chat_models["gemma"])
    assert modelfile.one("system") is None and "<end_of_turn>" in modelfile.all("stop")
    # The chat template writes "<bos>"; llama.cpp puts BOS before the prompt itself (add_bos_token), so
    # the TEMPLATE renders the rest and the model reads the same tokens.
    assert gguf_adds_bos(gguf_file)
    for name, conversation in CONVERSATIONS.items():
        sent = chat_prompt(conversation, "chat", tokenizer)
        assert sent.startswith("<bos>")
        assert ollama_render(modelfile, conversation) == sent.removeprefix("<bos>"), name


def test_other_chat_templates_are_refused_before_any_file_is_written(cli, tiny_llama, tmp_path):
    template = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}<|assistant|>\n"
    custom = with_tokenizer(tiny_llama, tmp_path / "custom", template)
    err = one_line_error(cli("export", custom, "--format", "ollama", "--out", tmp_path / "out"))
    assert "cannot write an Ollama TEMPLATE for this chat template;" in err
    assert not (tmp_path / "out").exists()


def test_chatml_with_im_start_as_bos_as_smollm2_has_it(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = SMOLLM2
    tokenizer.bos_token = "<|im_start|>"  # SmolLM2's tokenizer says so; it begins every ChatML turn
    found = ollama_prompt("chat", tokenizer)
    assert found.family == "chatml" and found.bos is None and found.system.startswith("You are a helpful")


def test_a_template_close_to_a_family_is_not_mistaken_for_it(tiny_gemma):
    from transformers import AutoTokenizer

    from pacos.errors import PacosError

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma)
    tokenizer.chat_template = gemma3_template()
    assert ollama_prompt("chat", tokenizer).family == "gemma"
    tokenizer.chat_template = gemma3_template("\\n")  # one newline after the system prompt, not two
    with pytest.raises(PacosError, match="cannot write an Ollama TEMPLATE"):
        ollama_prompt("chat", tokenizer)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("PARAMETER temperature 0.7\n", "no FROM line"),
        ("FROM ./m.gguf\nTEMPERATURE 0.7\n", "command must be one of"),
        ("FROM ./m.gguf\nPARAMETER temprature 0.7\n", "unknown parameter 'temprature'"),
        ("FROM ./m.gguf\nPARAMETER num_ctx 4k\n", "invalid int value"),
        ("FROM ./m.gguf\nPARAMETER top_p high\n", "invalid float value"),
        ('FROM ./m.gguf\nTEMPLATE """{{ .Prompt }}\n', "end of file inside a quoted value"),
        ("FROM ./m.gguf\nPARAMETER stop\n", "unexpected"),
        ("FROM ./m.gguf\nMESSAGE robot hello\n", "message role"),
    ],
)
def test_the_modelfile_parser_rejects_malformed_files(text, why):
    with pytest.raises(ModelfileError, match=why):
        parse_modelfile(text)


def test_the_go_template_renderer_follows_go():
    data = {
        "System": "",
        "Messages": [{"Role": "user", "Content": " hi "}, {"Role": "assistant", "Content": "yo"}],
    }
    template = (
        '{{- $n := 0 }}{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}U{{ $i }}:{{ .Content }}'
        '{{ else if eq .Role "assistant" }}  \n  {{- $n = 1 }}A:{{ .Content -}}   {{ end }}{{ end }}|'
        "{{ if .System }}S{{ else }}no system{{ end }}|{{ $n }}|{{ len .Messages }}|{{ not .System }}"
        '{{/* a comment */}}|{{ printf "%s-%d" "x" 2 }}|{{ eq (len (slice .Messages 1)) 1 }}'
    )
    assert render(template, data) == "U0: hi A:yo|no system|1|2|true|x-2|true"
    with pytest.raises(ValueError, match="not defined"):
        render("{{ trim .System }}", data)


# --- model cards --------------------------------------------------------------------------------------------


def fake_run(root: Path, model: str, data: Path, method: str = "lora") -> Path:
    """The files of a `pacos train` run that a card reads (its weights do not matter here)."""
    from pacos.train.config import TrainConfig

    run = root / "run"
    run.mkdir(parents=True)
    config = TrainConfig(model=model, data=str(data), method=method, template="alpaca", epochs=2, lr=2e-4)
    (run / "pacos_train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    summary = {
        "steps": 12,
        "final_loss": 1.2345,
        "best_val_loss": None,
        "train_examples": 3,
        "real_tokens": 999,
    }
    tokenization = {"conversations": 0, "kept": 2}  # train_examples also counts a synthetic loop example
    (run / "train_summary.json").write_text(json.dumps({**summary, "tokenization": tokenization}))
    return run


def generated_data(root: Path) -> Path:
    """A training set as `pacos generate` leaves it: data.json and summary.json, English and Chinese."""
    folder = root / "gen"
    folder.mkdir(parents=True)
    records = [
        {"instruction": "Name a color.", "input": "", "output": "Red.", "source": "self-instruct"},
        {"instruction": "Add the numbers.", "input": "2 3", "output": "5", "source": "self-instruct"},
        {"instruction": "说一种颜色。", "input": "", "output": "红色。", "source": "zh"},
    ]
    (folder / "data.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    summary = {"teacher": "http://127.0.0.1:8000/v1", "model": "gpt-teacher", "mode": "alpaca",
               "language": "en", "accepted": 3, "rejected": 7, "cost_usd": 0.42,
               "rejected_by_reason": {"too_similar": 5, "blacklisted_word": 2}}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "data.json"


def test_card_front_matter_loads_with_huggingface_hub_and_tells_the_lineage(tmp_path):
    from huggingface_hub import ModelCard

    from pacos.export.card import model_card, write_card

    run = fake_run(tmp_path, "smollm2-135m-instruct", generated_data(tmp_path))
    eval_dir = tmp_path / "eval" / "tuned"  # beside the run, of this very run: found without --eval
    eval_dir.mkdir(parents=True)
    metrics = {"model": str(run), "prompts": "held_out.jsonl", "eos_rate": 0.9, "rouge_l": 0.3125,
               "ifeval": {"prompt_strict": 0.5}, "judge": {"reliable": False, "win_rate": 80.0,
               "unreliable_because": "it prefers the first answer"}}  # fmt: skip
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "export"
    out.mkdir()
    text = model_card(
        str(run), "ollama", out, ["run-q8_0.gguf", "Modelfile"], template="alpaca", outtype="q8_0"
    )
    card = ModelCard.load(write_card(out, text))
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == [str(tmp_path / "gen" / "data.json")]
    assert meta["language"] == ["en", "zh"] and meta["pipeline_tag"] == "text-generation"
    assert {"pacos", "alpaca", "lora", "gguf", "ollama"} <= set(meta["tags"])
    body = card.text
    assert "LoRA: r 16, alpha 32" in body and "| epochs | 2 |" in body and "| learning rate | 0.0002" in body
    assert "3 records (67% en, 33% zh" in body and "self-instruct 2, zh 1" in body
    assert "teacher http://127.0.0.1:8000/v1 (gpt-teacher): 3 examples kept, 7 dropped" in body
    assert "too_similar 5" in body and "| answers ending with EOS | 90.0% |" in body
    assert "by LoRA on 2 examples" in body and "| training examples | 2 (+ 1 synthetic loops) |" in body
    assert (
        "| ROUGE-L vs reference | 0.312 |" in body
        and "| verifiable instructions: prompts, strict | 50.0% |" in body
    )
    assert "80.0%" not in body and "unreliable" in body  # an unreliable judge's win rate is left out
    assert "ollama create export -f Modelfile" in body


def test_hf_export_carries_the_recipe_and_a_card(cli, tiny_llama, tmp_path):
    from huggingface_hub import ModelCard
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pacos.infer.loading import pick_template

    run = fake_run(tmp_path, str(tiny_llama), generated_data(tmp_path))
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4))
    peft_model.save_pretrained(run)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(run)
    merged = tmp_path / "merged"
    result = cli("export", run, "--out", merged)
    assert result.code == 0, result.err
    meta = ModelCard.load(merged / "README.md").data.to_dict()
    assert "base_model" not in meta  # a local directory is no hub repository
    assert meta["library_name"] == "transformers" and "lora" in meta["tags"]
    # The merged model keeps the prompt format it was trained with, not the tokenizer's chat template.
    tokenizer = AutoTokenizer.from_pretrained(merged)
    tokenizer.chat_template = "{{ messages }}"
    assert pick_template(str(merged), tokenizer, None) == "alpaca"


def test_a_readme_pacos_did_not_write_is_kept(cli, tiny_llama, tmp_path):
    (tmp_path / "README.md").write_text("# my notes\n")
    result = cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path)
    assert result.code == 0, result.err
    assert (tmp_path / "README.md").read_text() == "# my notes\n" and "not written by pacos" in result.out
    (tmp_path / "README.md").unlink()
    assert cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path).code == 0
    first = (tmp_path / "README.md").read_text()
    assert cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path, "--quant", "q8_0").code == 0
    assert (tmp_path / "README.md").read_text() != first  # its own card is rewritten


def test_eval_option_needs_an_eval_directory(cli, tiny_llama, tmp_path):
    err = one_line_error(cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path, "--eval", tmp_path))
    assert "--eval" in err and "no metrics.json" in err and not list(tmp_path.glob("*.gguf"))


# --- --push -------------------------------------------------------------------------------------------------


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    assert huggingface_hub.get_token() is None


def test_push_without_a_token_keeps_the_export(cli, tiny_llama, tmp_path, no_token):
    out = tmp_path / "ollama"
    result = cli("export", tiny_llama, "--format", "ollama", "--out", out, "--push", "someone/tiny")
    err = one_line_error(result)
    assert "--push someone/tiny: no Hugging Face token (set HF_TOKEN" in err and str(out) in err
    assert (out / "Modelfile").is_file() and (out / "README.md").is_file() and list(out.glob("*.gguf"))


def test_push_to_an_unreachable_hub_says_so(cli, tiny_llama, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    err = one_line_error(
        cli("export", tiny_llama, "--format", "gguf", "--out", tmp_path, "--push", "someone/x")
    )
    assert "--push someone/x: the hub is unreachable: HF_HUB_OFFLINE is set" in err


def test_push_uploads_only_what_the_export_wrote(cli, tiny_llama, tmp_path, monkeypatch):
    import huggingface_hub

    import pacos.models

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs["repo_id"], kwargs))

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(pacos.models, "hub_unavailable", lambda repo: None)
    out = tmp_path / "ollama"
    out.mkdir()
    (out / "notes.txt").write_text("private")
    result = cli("export", tiny_llama, "--format", "ollama", "--out", out, "--push", "someone/tiny")
    assert result.code == 0, result.err
    assert "pushed to https://" in result.out and calls[0][:2] == ("create", "someone/tiny")
    upload = calls[1][2]
    assert upload["folder_path"] == out
    assert sorted(upload["allow_patterns"]) == sorted(
        [f"{tiny_llama.name}-f16.gguf", "Modelfile", "README.md"]
    )
    readme = (out / "README.md").read_text()
    assert "# someone/tiny" in readme and "hf download someone/tiny" in readme


def test_a_bad_repository_name_fails_before_the_export(cli, tiny_llama, tmp_path):
    err = one_line_error(
        cli("export", tiny_llama, "--format", "ollama", "--out", tmp_path / "o", "--push", "a/b/c")
    )
    assert "not a Hugging Face repository name" in err and not (tmp_path / "o").exists()
