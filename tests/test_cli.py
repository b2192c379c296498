"""The `snnsparse` command: subcommands listed, each with --help, clear errors."""
import subprocess
import sys

import pytest

from snnsparse import cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "snnsparse.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0
    for name in ("demo", "bench", "energy", "prune"):
        assert name in r.stdout


@pytest.mark.parametrize("name", ["demo", "bench", "energy", "prune"])
def test_each_command_has_help(name):
    r = _run(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: snnsparse " + name in r.stdout


def test_no_command_and_bad_option():
    assert cli.main([]) == 2
    r = _run("demo", "--epochs", "many")
    assert r.returncode == 2 and "invalid int value" in r.stderr
    r = _run("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr
