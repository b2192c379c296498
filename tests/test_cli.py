"""The `snnsparse` command: subcommands listed, each with --help, clear errors."""
import re
import subprocess
import sys

import pytest
import torch

from snnsparse import benchmark, cli, demo, recipes
from snnsparse.energy import cli as energy_cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "snnsparse.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0
    for name in ("demo", "bench", "energy", "prune", "optimize"):
        assert name in r.stdout


@pytest.mark.parametrize("name", ["demo", "bench", "energy", "prune", "optimize"])
def test_each_command_has_help(name):
    r = _run(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: snnsparse " + name in r.stdout


def test_no_command_and_bad_option():
    assert cli.main([]) == 2
    r = _run("demo", "--epochs", "many")
    assert r.returncode == 2 and "argument --epochs: must be an integer >= 1, got 'many'" in r.stderr
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


# -- bad arguments: an argparse-style one-line error naming the argument, exit 2, before any work --------
@pytest.fixture
def no_work(monkeypatch):
    """Make every subcommand's real work (training, counting, sweeping) fail the test if it starts."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")
    for module, name in ((recipes, "run_recipe"), (energy_cli, "count"), (energy_cli, "demo_model"),
                         (demo, "load_data"), (demo, "train"), (benchmark, "run_sweep"),
                         (benchmark, "run_targets")):
        monkeypatch.setattr(module, name, work)


def _usage_error(capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    _check_error(err, f"snnsparse {argv[0]}", option)
    return err


def _check_error(err, prog, option):
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err                       # one line says what is wrong ...
    assert errors[0].startswith(f"{prog}: error: argument {option}: "), err   # ... naming the argument


@pytest.fixture
def paths(tmp_path):
    """Inputs for the error cases: a plain file, an empty dir, corrupt CIFAR-10 and MNIST dirs."""
    p = {"file": tmp_path / "plain.txt", "empty": tmp_path / "empty", "cifar": tmp_path / "cifar",
         "mnist": tmp_path / "mnist", "dict_pt": tmp_path / "state.pt", "tmp": tmp_path}
    p["file"].write_text("not a tensor")
    p["empty"].mkdir()
    (p["cifar"] / "cifar-10-batches-py").mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        (p["cifar"] / "cifar-10-batches-py" / name).write_bytes(b"garbage, not a pickle")
    p["mnist"].mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (p["mnist"] / name).write_bytes(b"\x12\x34\x56\x78 not IDX")
    torch.save({"weight": torch.zeros(2)}, p["dict_pt"])
    return {k: str(v) for k, v in p.items()}


ENERGY_ERRORS = [
    (["--density", "1.5"], "--density"),
    (["--density", "nan"], "--density"),
    (["--input", "{tmp}/missing.pt"], "--input"),
    (["--input", "{file}"], "--input"),                           # not a torch.save file
    (["--input", "{tmp}"], "--input"),                            # a directory
    (["--plot", "{tmp}/missing_dir/energy.png"], "--plot"),
    (["--json", "{tmp}/missing_dir/energy.json"], "--json"),
    (["--json", "{tmp}"], "--json"),
    (["{tmp}/missing_model.pt", "--input-shape", "1,2"], "model"),
    (["{dict_pt}", "--input-shape", "1,2"], "model"),              # a state_dict, not a model
    (["{file}", "--input-shape", "1,2"], "model"),
    (["{dict_pt}"], "--input-shape"),                              # a model file needs an input
    (["--input-shape", "4,0,1,8,8"], "--input-shape"),
    (["--spike-rate", "2", "--input-shape", "1,1,1,8,8"], "--spike-rate"),
    (["--spike-rate", "0.5"], "--spike-rate"),                     # was silently ignored
    (["--input", "{dict_pt}", "--input-shape", "1,2"], "--input-shape"),   # two inputs: which one?
    (["--timesteps", "0"], "--timesteps"),
    (["--e-ac", "-1"], "--e-ac"),
    (["--e-mac", "inf"], "--e-mac"),
    (["--seed", "1.5"], "--seed"),
    (["--backend", "nope"], "--backend"),
]


@pytest.mark.parametrize("args,option", ENERGY_ERRORS)
def test_energy_bad_arguments(capsys, no_work, paths, args, option):
    _usage_error(capsys, ["energy"] + [a.format(**paths) for a in args], option)


def test_energy_unavailable_backend(capsys, no_work, monkeypatch):
    import snnsparse as ss
    monkeypatch.setattr(ss.backends, "available", lambda: {n: (True if n == "reference" else "test: missing")
                                                           for n in ss.backends.NAMES})
    _usage_error(capsys, ["energy", "--backend", "cuda"], "--backend")


PRUNE_ERRORS = [
    ([], "--data"),                                              # cifar10 recipe, no --data
    (["--data", "{tmp}/missing"], "--data"),
    (["--data", "{file}"], "--data"),
    (["--data", "{empty}"], "--data"),
    (["--data", "{cifar}"], "--data"),                           # corrupt batches
    (["--dataset", "mnist", "--data", "{mnist}"], "--data"),     # corrupt IDX files
    (["--dataset", "mnist", "--data", "{cifar}"], "--data"),     # no MNIST files
    (["--dataset", "digits", "--data", "{empty}"], "--data"),    # digits are bundled: --data unused
    (["--recipe", "lth-digits"], "--recipe"),                    # recipe of another method
    (["--dataset", "digits", "--batch-size", "0"], "--batch-size"),
    (["--dataset", "digits", "--lr", "nan"], "--lr"),
    (["--dataset", "digits", "--lr", "0"], "--lr"),
    (["--dataset", "digits", "--epochs", "-1"], "--epochs"),     # ran and reported accuracy 0.11
    (["--dataset", "digits", "--T", "0"], "--T"),                # ran and reported accuracy 0.11
    (["--dataset", "digits", "--max-batches", "0"], "--max-batches"),
    (["--dataset", "digits", "--seed", "x"], "--seed"),
    (["--dataset", "digits", "--device", "tpu9"], "--device"),
    (["--dataset", "digits", "--out", "{file}"], "--out"),
    (["--dataset", "digits", "--out", "{file}/sub"], "--out"),  # failed only after training
]


@pytest.mark.parametrize("args,option", PRUNE_ERRORS)
def test_prune_bad_arguments(capsys, no_work, paths, args, option):
    _usage_error(capsys, ["prune", "--method", "gradr"] + [a.format(**paths) for a in args], option)


def test_prune_device_cuda_without_cuda(capsys, no_work, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _usage_error(capsys, ["prune", "--method", "gradr", "--dataset", "digits", "--device", "cuda"], "--device")
    assert "CUDA is not available here" in err


DEMO_BENCH_ERRORS = [
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--prune-epochs", "-2"], "--prune-epochs"),
    (["demo", "--t", "0"], "--t"),
    (["demo", "--lr", "inf"], "--lr"),
    (["demo", "--alpha", "-1"], "--alpha"),
    (["demo", "--out", "{file}/sub"], "--out"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--reps", "0"], "--reps"),
    (["bench", "--backends", "cpp,nope"], "--backends"),
    (["bench", "--out", "{file}"], "--out"),
]


@pytest.mark.parametrize("args,option", DEMO_BENCH_ERRORS)
def test_demo_and_bench_bad_arguments(capsys, no_work, paths, args, option):
    _usage_error(capsys, [a.format(**paths) for a in args], option)


@pytest.mark.parametrize("module,args,prog,option", [
    ("snnsparse.cli", ["prune", "--method", "gradr", "--dataset", "digits", "--lr", "nan"], "snnsparse prune", "--lr"),
    ("snnsparse.cli", ["prune", "--method", "gradr"], "snnsparse prune", "--data"),      # raised after parsing
    ("snnsparse.energy", ["--plot", "{tmp}/missing_dir/e.png"], "python -m snnsparse.energy", "--plot"),
    ("snnsparse.recipes", ["--method", "gradr", "--recipe", "lth-digits"], "snnsparse prune", "--recipe"),
])
@pytest.mark.slow  # a subprocess (heavy); make test runs every slow test too
def test_bad_arguments_through_python_m(paths, module, args, prog, option):
    r = subprocess.run([sys.executable, "-m", module] + [a.format(**paths) for a in args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    _check_error(r.stderr, prog, option)


def test_energy_no_plot_ignores_the_default_plot_path(tmp_path, monkeypatch, capsys):
    # --plot's default is checked only when a plot is written; --json into an existing directory works.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sub" / "report.json"
    out.parent.mkdir()
    assert cli.main(["energy", "--no-plot", "--json", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "energy.png").exists()


def test_output_path_checks(tmp_path):
    import argparse
    new = tmp_path / "a" / "b"
    assert cli.writable_dir(str(new)) == str(new) and not new.exists()   # can be created; nothing made yet
    assert cli.writable_file(str(tmp_path / "x.png")) == str(tmp_path / "x.png")
    (tmp_path / "f").write_text("")
    for check, path in ((cli.writable_dir, tmp_path / "f"), (cli.writable_dir, tmp_path / "f" / "g"),
                        (cli.writable_file, tmp_path / "nope" / "x.png"), (cli.writable_file, tmp_path),
                        (cli.existing_file, tmp_path), (cli.existing_dir, tmp_path / "f")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(str(path)))):
            check(str(path))


OPTIMIZE_ERRORS = [
    (["--reps", "-1"], "--reps"),
    (["--threads", "x"], "--threads"),
    (["--save", "{tmp}/missing_dir/opt.pt"], "--save"),
    (["{dict_pt}", "--input-shape", "1,2"], "model"),
    (["{dict_pt}"], "--input-shape"),
    (["--spike-rate", "0.5"], "--spike-rate"),
]


@pytest.mark.parametrize("args,option", OPTIMIZE_ERRORS)
def test_optimize_bad_arguments(capsys, paths, args, option):
    _usage_error(capsys, ["optimize"] + [a.format(**paths) for a in args], option)


def test_optimize_prints_the_report_and_saves_the_model(tmp_path, capsys):
    """The command runs optimize_for_inference on the demo model: the report's rows, a timing line, and
    a saved model that loads and gives the optimized model's outputs."""
    from snnsparse.energy.cli import demo_model
    out = tmp_path / "opt.pt"
    assert cli.main(["optimize", "--reps", "1", "--save", str(out)]) == 0
    text = capsys.readouterr().out
    assert "packed-event" in text and "neuron-fused" in text and re.search(r"optimized [0-9.]+ ms", text)
    fast = torch.load(out, weights_only=False)
    model, x = demo_model(density=0.5, seed=0)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "reset") and m is not model:
                m.reset()
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)

