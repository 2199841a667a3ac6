"""pacos.infer on a GPU: a Gemma-3-270M-shaped model (the real config and tokenizer, random weights:
the real weights are 1 GB and cannot travel to a lent GPU machine) on CUDA.

Exactness in fp32: the engine alone == transformers `generate`, the engine in a batch == alone, rows
joining a running batch keep their answers, seeded sampling ignores the batch, streaming == generate.
Speed in bf16: transformers `generate` vs the engine, batch 1 and 8, then with `TorchEngine.compile()`.

    python benchmarks/check_infer_gpu.py --model-dir DIR_WITH_config.json_AND_tokenizer.json
"""

import argparse
import json
import sys
import time

import torch

sys.path.insert(0, ".")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pacos.data.io import read_records
from pacos.data.templates import render_prompt
from pacos.infer import SamplingParams, TorchEngine
from pacos.infer.decoder import Decoder

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model-dir", default=".gpu/gemma", help="config.json and tokenizer of the model")
args = parser.parse_args()
cfg = AutoConfig.from_pretrained(args.model_dir)
tok = AutoTokenizer.from_pretrained(args.model_dir)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg)
with torch.no_grad():  # sharper logits than the default init, so greedy has few near-ties
    for p in model.parameters():
        if p.ndim == 2:
            p.normal_(0, 0.05)
model = model.to("cuda").eval()
eng = TorchEngine(model, tok, "alpaca", name="random-gemma")
recs = read_records("seed-tasks")[::23][:8]
prompts = [eng.encode(render_prompt(r, "alpaca")) for r in recs]
out = {
    "cuda": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "prompt_tokens": [len(p) for p in prompts],
}
g = SamplingParams(max_new_tokens=32, ignore_eos=True)
singles = [eng.generate([p], g)[0].token_ids for p in prompts]
batch = [c.token_ids for c in eng.generate(prompts, g)]
hf = []
for p in prompts:
    o = model.generate(
        torch.tensor([p], device="cuda"),
        max_new_tokens=32,
        min_new_tokens=32,
        do_sample=False,
        pad_token_id=0,
    )
    hf.append(o[0, len(p) :].tolist())
out["fp32_single_eq_hf"] = sum(a == b for a, b in zip(singles, hf))
out["fp32_batch_eq_single"] = sum(a == b for a, b in zip(batch, singles))
got = {i: [] for i in range(3)}
dec = Decoder(eng)


def mk(i, n):
    def record(event):
        got[i].extend(event.token_ids)

    return eng.new_sequence(prompts[i], SamplingParams(max_new_tokens=n, ignore_eos=True), record)


dec.add([mk(0, 32)])
for _ in range(5):
    dec.step()
dec.add([mk(1, 32), mk(2, 8)])
while len(dec):
    dec.step()
out["join_eq"] = [got[0] == singles[0], got[1] == singles[1], got[2] == singles[2][:8]]
s = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=5, ignore_eos=True, logprobs=2)
a = eng.generate([prompts[0]], s)[0]
b = eng.generate([prompts[0], prompts[1]], [s, g])[0]
out["seeded_sampling_batch_invariant"] = a.token_ids == b.token_ids
out["stop_and_stream"] = (
    "".join(e.text for e in eng.stream(prompts[0], g)) == eng.generate([prompts[0]], g)[0].text
)


def rate(fn, n_tokens, reps=3):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return round(n_tokens / sorted(ts)[len(ts) // 2], 1)


N = 64
model.to(torch.bfloat16)
eng.dtype = torch.bfloat16
p64 = SamplingParams(max_new_tokens=N, ignore_eos=True)
tok.padding_side = "left"
texts = [render_prompt(r, "alpaca") for r in recs]


def hf_generate(enc):
    with torch.inference_mode():
        return model.generate(**enc, max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)


for bs in (1, 8):
    enc = tok(texts[:bs], return_tensors="pt", padding=True).to("cuda")
    out[f"bf16 hf generate b{bs}"] = rate(lambda enc=enc: hf_generate(enc), bs * N)
    out[f"bf16 pacos b{bs}"] = rate(lambda bs=bs: eng.generate(prompts[:bs], p64), bs * N)
t = time.perf_counter()
eng.compile()
out["compile_s"] = round(time.perf_counter() - t, 1)
for bs in (1, 8):
    out[f"bf16 pacos compiled b{bs}"] = rate(lambda bs=bs: eng.generate(prompts[:bs], p64), bs * N)
print(json.dumps(out, indent=1))
