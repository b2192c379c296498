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


def test_bench_writes_csv_and_png(tmp_path):
    # A one-point sweep: checks the plumbing (rows, CSV, PNG), never the timings.
    from snnsparse import benchmark
    rows = benchmark.run_sweep(["reference"], shapes=[("tiny", "linear", dict(N=4, K=16, M=8))], rates=(0.5,),
                               densities=(0.5,), reps=1, out_dir=str(tmp_path), verbose=False)
    assert len(rows) == 1 and rows[0]["backend"] == "reference" and rows[0]["speedup"] > 0
    assert (tmp_path / "sweep_reference.csv").read_text().startswith("backend,shape,kind,rate")
    png = benchmark.plot(rows, str(tmp_path / "s.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"
    r = _run("bench", "--backends", "nope")
    assert r.returncode != 0 and "unknown backend" in r.stderr
