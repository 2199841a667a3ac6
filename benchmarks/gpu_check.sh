#!/bin/bash
# The checks a lent GPU machine runs (benchmarks/README.md, "On a GPU"): the tests that load models on
# `auto` (so on the GPU there), tests/test_cuda.py, and decoding and training speed on random-weight models
# with the real architectures (the real weights cannot travel: no hub there, 64 MiB of files).
# Needs, in .gpu/ (git-ignored, carried): whl/ (pacos's dependencies missing from the machine's image)
# and models/NAME/ (config.json + tokenizer files, tokenizer.json xz-compressed). Writes to $OUT.
# The wheels of the 2026-12-04 run (cp312 manylinux, `pip download --no-deps` of the versions in .venv):
# pacos's own dependencies the image lacks (pydantic, pydantic_core, annotated-types, typing-inspection,
# fastapi, starlette, opentelemetry-api, uvicorn, llguidance, gguf, datasets, dill, multiprocess, httpx2,
# httpcore2, truststore, openai, jiter, sniffio) and, to match .venv, transformers, tokenizers,
# huggingface_hub, safetensors, peft, accelerate, anyio, typing_extensions: 26 MB.
set -o pipefail
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
for name in ${GPU_MODELS:-gemma3}; do
    mkdir -p /tmp/cfg/$name; cp .gpu/models/$name/* /tmp/cfg/$name/; xz -d /tmp/cfg/$name/*.xz
    python3 benchmarks/random_model.py /tmp/cfg/$name /tmp/models/$name 2>&1 | grep -v shards
done
# Two-process torchrun tests need two GPUs; TRL is not on the machine.
timeout ${PYTEST_SECONDS:-180} python3 -m pytest -v -n 8 --dist loadfile -p no:cacheprovider \
    tests/test_cuda.py tests/test_infer_engine.py tests/test_train_runs.py tests/test_train_units.py \
    tests/test_preference.py tests/test_conversations.py tests/test_distill.py tests/test_serve.py \
    tests/test_pairs.py tests/test_constrain.py \
    --deselect "tests/test_train_runs.py::test_two_process_run_under_torchrun_matches_one_process" \
    --deselect "tests/test_preference.py::test_dpo_under_torchrun_fsdp_matches_one_process" \
    2>&1 | tee "$OUT/pytest.log" | grep -E "FAILED|ERROR|passed|failed" | tail -40
timeout ${BENCH_SECONDS:-130} python3 benchmarks/bench_generate.py --model /tmp/models/gemma3 \
    --configs hf-bf16,pacos-bf16,serve-bf16 --batches ${BENCH_BATCHES:-8,32} --repeats 2 \
    --out "$OUT/bench-generate-gemma3.json" > /dev/null  # --out: rewritten per configuration
tail -c 1500 "$OUT/bench-generate-gemma3.json"
for method in lora full; do
    timeout 50 python3 -m pacos train --model /tmp/models/gemma3 --data seed-tasks --$method --max-steps 8 \
        --output-dir /tmp/train-$method --set batch_size=16 --set micro_batch_size=16 --set tensorboard=false \
        > "$OUT/train-$method.log" 2>&1
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], {k: s[k] for k in ('steps','tokens_per_second','seconds','runtime')})" \
        /tmp/train-$method/train_summary.json $method 2>&1 | tee -a "$OUT/train.txt"
done
