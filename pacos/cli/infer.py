"""`pacos chat`, `serve` and `export`: using a model."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pacos.cli.app import (
    BackendOption,
    CompileOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    PromptLookupOption,
    QuantizeOption,
    TemplateOption,
    app,
    load_cli_engine,
)
from pacos.errors import PacosError


@app.command("chat")
def chat(
    model: ModelOption,
    backend: BackendOption = "torch",
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    quantize: QuantizeOption = "auto",
    compile: CompileOption = False,
    template: TemplateOption = None,
    system: Annotated[str | None, typer.Option(help="A system message for every turn.")] = None,
    history: Annotated[
        bool | None,
        typer.Option(
            "--history/--no-history",
            help="Keep the conversation [default: for chat models and models tuned on conversations].",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0: greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.9,
    top_k: Annotated[int, typer.Option(help="0: no limit.")] = 40,
    repetition_penalty: Annotated[float, typer.Option()] = 1.1,
    seed: Annotated[int | None, typer.Option()] = None,
    prompt_lookup: PromptLookupOption = 0,
) -> None:
    """Chat with a model in the terminal; answers stream as they are written."""
    from pacos.infer.chat import ChatSession, run_chat
    from pacos.infer.sampling import SamplingParams

    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    engine = load_cli_engine(model, backend, dtype, device, quantize, compile, template, prompt_lookup)
    run_chat(ChatSession(engine, params, system=system, history=history), sys.stdout)


@app.command("serve")
def serve(
    model: ModelOption,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    backend: BackendOption = "torch",
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    quantize: QuantizeOption = "auto",
    compile: CompileOption = False,
    template: TemplateOption = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Requests decoded together at most (32: 1.3x the tokens/s of 8 on a CPU).")
    ] = 32,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most; more get 429.")] = 64,
    prefill_chunk: Annotated[
        int | None,
        typer.Option(
            help="Prompt tokens run between two decode steps (0: whole prompts; default 32): smaller keeps "
            "running streams smoother, larger admits new requests sooner.",
            show_default=False,
        ),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model id clients send and /v1/models lists [default: --model].")
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="uvicorn's: warning, info (one line per request), debug.")
    ] = "info",
    prompt_lookup: PromptLookupOption = 0,
) -> None:
    """OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions) with continuous batching.

    Set PACOS_API_KEY to require 'Authorization: Bearer KEY' on /v1 requests (an environment variable, not
    a flag: a command line shows in `ps` and shell history)."""
    import ipaddress
    import signal
    import threading

    import uvicorn

    from pacos.infer.scheduler import Scheduler
    from pacos.serve import create_app

    if max_batch_size < 1 or max_queue < 1:  # every request passes through the queue: 0 would refuse all
        raise PacosError("--max-batch-size and --max-queue must be >= 1")
    if prefill_chunk is not None and prefill_chunk < 0:
        raise PacosError("--prefill-chunk must be >= 0")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    api_key = os.environ.get("PACOS_API_KEY") or None
    if not loopback and not api_key:
        print(
            f"pacos: warning: listening on {host} without an API key: anyone who can reach this port can "
            "use the model (set PACOS_API_KEY)",
            file=sys.stderr,
        )
    engine = load_cli_engine(
        model, backend, dtype, device, quantize, compile, template, prompt_lookup, max_batch_size
    )
    chunk = {} if prefill_chunk is None else {"prefill_chunk": prefill_chunk}
    scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_waiting=max_queue, **chunk)
    scheduler.looping = True  # requests may arrive before the loop below starts
    name = served_model_name or engine.name
    print(
        f"loaded {engine.name} ({str(engine.dtype).removeprefix('torch.')} on {engine.device}, template "
        f"{engine.template}, context {engine.context_length} tokens); serving '{name}' at "
        f"http://{host}:{port}/v1 (chat page at /, API docs at /docs), batches of up to {max_batch_size}",
        flush=True,
    )
    app_ = create_app(engine, scheduler, api_key=api_key, model_name=name)
    # A client that keeps a connection open must not hold the exit for long.
    config = uvicorn.Config(app_, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    # The HTTP server on a thread, the model on the main thread that loaded it (Scheduler.run says why).
    web = threading.Thread(target=server.run, name="pacos-http", daemon=True)
    web.start()
    watcher = threading.Thread(target=lambda: (web.join(), scheduler.stop()), daemon=True)
    watcher.start()  # the server failed to start (a port in use) or exited: stop the model too
    # SIGTERM as Ctrl-C: KeyboardInterrupt on the main thread. A handler that took a lock (Event.set)
    # could deadlock: it runs on the main thread, possibly while that thread holds the same lock.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        scheduler.run()
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.stop()
        server.should_exit = True
        web.join(timeout=30)
    if not server.started:
        raise PacosError(f"could not listen on {host}:{port} (see the error above)")


@app.command("export")
def export(
    model: Annotated[
        str,
        typer.Argument(
            help="A `pacos train` output directory (LoRA adapter or full model), a Hugging Face model "
            "directory or an embedded name (gemma-3-270m)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="hf: the directory to write. gguf: the .gguf file, or an existing directory to put "
            "MODEL-OUTTYPE.gguf in. ollama: the directory for MODEL-OUTTYPE.gguf and its Modelfile "
            "(created if missing; other files there stay).",
        ),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="hf: merged Hugging Face safetensors directory. gguf: one llama.cpp GGUF file. ollama: "
            "a GGUF file and a Modelfile (`ollama create NAME -f Modelfile`).",
        ),
    ] = "hf",
    outtype: Annotated[
        str,
        typer.Option(
            "--outtype",
            "--quant",
            help="GGUF weights: f16, q8_0, q6_k, q4_k_m (llama-quantize's mix) or q4_0 (norms stay f32).",
        ),
    ] = "f16",
    base: Annotated[
        str | None, typer.Option(help="Base model of a LoRA adapter [default: the one it was trained on].")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(help="Prompt format for the Modelfile and the model card [default: the model's own]."),
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="A `pacos eval` directory to quote in the model card [default: one of this model "
            "found beside it].",
        ),
    ] = None,
    push: Annotated[
        str | None,
        typer.Option(
            help="Upload the export to this Hugging Face repository (created if missing; the token comes "
            "from HF_TOKEN or `hf auth login`)."
        ),
    ] = None,
) -> None:
    """Merge a LoRA adapter into its base and save safetensors (hf), write one GGUF file (gguf), or a
    GGUF file and an Ollama Modelfile (ollama); a README.md model card goes with each.

    GGUF (no llama.cpp needed): Llama/SmolLM2, Qwen2/3 and Gemma 3 text models, tokenizer included.
    """
    from pacos.export.card import model_card, write_card
    from pacos.export.gguf import OUTTYPES

    if fmt not in ("hf", "gguf", "ollama"):
        raise PacosError(f"unknown export format '{fmt}'; choose hf, gguf or ollama")
    if outtype not in OUTTYPES:
        raise PacosError(f"unknown --outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")
    if fmt == "hf" and outtype != "f16":
        raise PacosError("--outtype applies to --format gguf and ollama only")
    if template is not None:
        from pacos.data.templates import get_template

        get_template(template)  # an unknown name fails now, not after the export
    if eval_dir is not None and not (eval_dir / "metrics.json").is_file():
        raise PacosError(f"--eval {eval_dir}: no metrics.json there (a `pacos eval --out` directory)")
    if push:
        from pacos.export.push import check_repo_id

        check_repo_id(push)
    if fmt == "ollama":
        from pacos.export.ollama import export_ollama

        result = export_ollama(model, out, outtype, base, template)
        size = result.gguf.stat().st_size / 2**20
        print(
            f"wrote {result.gguf} ({outtype}, {size:.1f} MiB) and {result.modelfile} (prompt format "
            f"{result.prompt.family}); then: ollama create NAME -f {result.modelfile} && ollama run NAME"
        )
        if result.note:
            print(f"pacos: note: {result.note}", file=sys.stderr)
        folder, files, chosen = out, [result.gguf.name, result.modelfile.name], result.prompt.family
        chosen = chosen if chosen.startswith("alpaca") else "chat"
    elif fmt == "gguf":
        from pacos.export.gguf import export_gguf

        path = export_gguf(model, out, outtype, base)
        size = path.stat().st_size / 2**20
        print(f"wrote {path} ({outtype}, {size:.1f} MiB; loads with llama.cpp or transformers gguf_file=)")
        folder, files, chosen = path.parent, [path.name], _prompt_format(model, template, base)
    else:
        from pacos.export.hf import export_hf

        path = export_hf(model, out, base)
        print(f"wrote a standalone model to {path} (loads with AutoModelForCausalLM.from_pretrained)")
        folder, chosen = path, _prompt_format(model, template, base)
        files = sorted(p.name for p in path.iterdir() if p.is_file())
    card = model_card(
        model, fmt, folder, files, template=chosen, eval_dir=eval_dir, base=base, repo=push, outtype=outtype
    )
    readme = write_card(folder, card)
    if readme is None:
        print(f"pacos: note: {folder / 'README.md'} was not written by pacos: left as it is, no model card")
    else:
        print(f"wrote the model card {readme}")
        files.append(readme.name)
    if push:
        from pacos.export.push import push_folder

        url = push_folder(folder, push, None if fmt == "hf" else files)
        print(f"pushed to {url}")


def _prompt_format(model: str, template: str | None, base: str | None) -> str | None:
    """The template name `pacos chat` would prompt the model with, for its card (None: not known)."""
    from pacos.export.ollama import model_prompt

    try:
        return model_prompt(model, template, base)[0]
    except PacosError:
        return None
