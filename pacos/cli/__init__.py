"""The `pacos` command line: a thin layer over the pipeline modules, one file per group of commands.

Importing the package registers every command on `app` (in pipeline order, which `pacos --help` keeps);
`main` is the entry point.
"""

# isort: off
from pacos.cli import data, data_select, generate, train, evaluate, infer, quickstart  # noqa: F401  (register commands)

# isort: on
from pacos.cli.app import app, main

__all__ = ["app", "main"]
