"""`pacos compress`: layer pruning by block influence, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pacos.compress.prune import block_influence, drop_layers, prune


def with_identity_layer(src: Path, out: Path, layer: int) -> Path:
    """A copy of `src` whose layer `layer` adds nothing to the residual stream (its output projections
    are zero), so its input and output hidden states are equal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
        target = model.get_decoder().layers[layer]
        target.self_attn.o_proj.weight.zero_()
        target.mlp.down_proj.weight.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_a_layer_that_passes_its_input_through_is_the_one_dropped(
    arch, tiny_llama, tiny_gemma, tmp_path, cli
):
    src = with_identity_layer(tiny_llama if arch == "llama" else tiny_gemma, tmp_path / "src", layer=1)
    data = tmp_path / "data.jsonl"
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"number {i} " * 3} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("compress", src, "--out", tmp_path / "pruned", "--drop", "1", "--data", data)
    assert result.code == 0, result.err
    assert "[compress] block influence of" in result.err and "[compress] saving to" in result.err  # progress
    report = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert report["dropped"] == [1] and report["block_influence"][1] == pytest.approx(0.0, abs=1e-6)
    assert report["block_influence"][0] > 0.01
    # Dropping a pass-through layer changes nothing.
    unpruned, pruned = report["evaluation"]["unpruned"], report["evaluation"]["pruned"]
    assert pruned["next_token_agreement"] == 1.0
    assert pruned["perplexity"] == pytest.approx(unpruned["perplexity"], rel=1e-4)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert len(model.get_decoder().layers) == model.config.num_hidden_layers == 1
    if arch == "gemma":
        assert model.config.layer_types == ["sliding_attention"]  # layer 0's type kept
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():  # the KV cache works after renumbering: cached decoding = full recompute
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        full = model(out).logits[0, ids.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(out[0, ids.shape[1] :], full)


def test_block_influence_and_drop_layers_on_a_loaded_model(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    influence = block_influence(model, [[1, 5, 6, 7, 8], [1, 9, 10]])
    assert len(influence) == 2 and all(0 <= b <= 2 for b in influence)
    drop_layers(model, [0])
    assert len(model.get_decoder().layers) == 1 and model.get_decoder().layers[0].self_attn.layer_idx == 0


def test_dropping_every_layer_is_refused_in_one_line(cli, tiny_llama, tmp_path):
    result = cli("compress", tiny_llama, "--out", tmp_path / "x", "--drop", "2")
    assert result.code == 1 and result.err.count("\n") == 1 and "has 2 layers" in result.err
    with pytest.raises(Exception, match="has 2 layers"):
        prune(str(tiny_llama), tmp_path / "y", 0)
