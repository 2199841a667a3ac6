from __future__ import annotations

from pacos import __version__


def test_version_and_help(cli):
    assert cli("--version").out.strip() == f"pacos {__version__}"
    result = cli("--help")
    assert result.code == 0
    for command in ("data", "generate", "train", "eval", "chat", "serve", "export", "quickstart"):
        assert command in result.out
    assert all(
        c in cli("data", "--help").out
        for c in ("validate", "clean", "mix", "split", "stats", "convert", "dedup")
    )


def test_usage_errors_exit_2_without_traceback(cli):
    result = cli("data", "clean")
    assert result.code == 2 and "Traceback" not in result.err + result.out
