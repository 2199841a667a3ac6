"""The `pacos` app, the options its commands share, and `main` (one-line errors, exit codes).

Every user-facing failure is a PacosError, printed as one line on stderr with exit code 1.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from pacos import __version__
from pacos.errors import PacosError

app = typer.Typer(
    help="pacos: Stanford Alpaca end to end. Generate, clean, fine-tune, evaluate, chat, serve, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; rich markup would swallow it
)
data_app = typer.Typer(
    help="Read, validate, clean, mix, split and describe instruction data.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE (repeatable).")
]


# Loading a model to generate with: shared by `chat` and `serve`.
ModelOption = Annotated[str, typer.Option(help="Embedded name, .gguf file, directory, hub id or adapter.")]
BackendOption = Annotated[
    str, typer.Option(help="torch, or llama.cpp for GGUF files (pacos[llama]; one request at a time).")
]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
QuantizeOption = Annotated[
    str,
    typer.Option(
        help="auto (fp16 on x86 CPUs computing in fp32, else none); none; fp16 (fp16 weights, fp32 math: "
        "x86 CPUs) or int8 (int8 LM head and fp16 layers on x86 CPUs, int8 weights elsewhere): several "
        "times faster decoding of batches on a CPU."
    ),
]
CompileOption = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the steps that only decode: faster batches (1.1-1.2x at 8 rows here), about "
        "90 s of compiling at start on 2 cores.",
    ),
]
TemplateOption = Annotated[str | None, typer.Option(help="Prompt format [default: the model's own].")]
PromptLookupOption = Annotated[
    int,
    typer.Option(
        help="Speculative decoding by prompt lookup: feed up to N tokens that followed the answer's last "
        "words where they occurred before, and keep those the model would choose (greedy answers only; "
        "the model's greedy text, fewer steps where answers copy their input). 0: off.",
        min=0,
        max=16,
    ),
]


def load_cli_engine(
    model: str,
    backend: str,
    dtype: str,
    device: str,
    quantize: str,
    compile: bool,
    template: str | None,
    prompt_lookup: int = 0,
    max_batch_size: int | None = None,
) -> Any:
    from pacos.infer import load_engine

    engine = load_engine(
        model, backend=backend, dtype=dtype, device=device, quantize=quantize, template=template
    )
    if max_batch_size is not None and backend == "torch":  # generate()'s default; a server's flag rules
        engine.max_batch_size = max_batch_size
    if compile and hasattr(engine, "compile"):
        print("pacos: compiling the decode step (about 90 s on 2 cores)", file=sys.stderr)
        engine.compile()  # after the batch size is known: every batch shape compiles before requests
    if prompt_lookup and not engine.takes_drafts:
        raise PacosError(
            "--prompt-lookup needs the torch backend and an architecture it runs as ragged batches "
            "(Llama, Mistral, Qwen 2/3, Gemma 3, SmolLM3)"
        )
    engine.prompt_lookup = prompt_lookup
    return engine


def _version(value: bool) -> None:
    if value:
        print(f"pacos {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def progress(items: list[Any], description: str) -> Iterable[Any]:
    """A progress bar on stderr for long loops (hidden for small inputs and when not a terminal)."""
    if len(items) < 2000:
        return items
    from rich.progress import track

    return track(items, description=description, console=stderr_console(), transient=True)


def main(argv: list[str] | None = None) -> None:
    # transformers' notices about its own upcoming renames, and its per-tensor loading bars, say nothing to
    # a pacos user (pacos reports its own progress); errors still show. Set before transformers loads.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.stderr.isatty():  # bars redrawn with \r are noise in a log; on a terminal they show downloads
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", message=r"(?s).*\bdeprecated\b", category=FutureWarning)
    try:
        app(args=argv, prog_name="pacos")
    except PacosError as e:
        print(f"pacos: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("pacos: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug in pacos, not the user's input
        if os.environ.get("PACOS_DEBUG"):
            raise
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        at = f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
        print(
            f"pacos: internal error: {type(e).__name__}: {e}{at} (set PACOS_DEBUG=1 for the traceback; "
            "please report it)",
            file=sys.stderr,
        )
        sys.exit(2)
