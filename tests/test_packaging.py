"""`pip wheel .` and installing the wheel in a fresh venv (slow: it compiles snnsparse._C, minutes).

pip uses only the sources it is configured with (index, extra index, find-links). No CUDA torch can
land: PIP_CONSTRAINT pins torch to exactly the build that runs these tests (e.g. 2.13.0+cpu), in the
isolated build environment too (pip's build subprocess inherits the environment), so pip installs that
build or fails; it never picks another torch. `pip install .` builds the wheel with the same PEP 517
hook (build_wheel) and installs it, which is what this test does in two visible steps.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snnsparse

ROOT = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.so", "__pycache__", "*.egg-info", ".pytest_cache",
                               ".benchmarks", "bench/out", "demo_out", ".whl")


def _run(cmd, env, cwd, timeout=3000):
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_pip_wheel_and_install_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    constraint = tmp_path / "torch-constraint.txt"
    constraint.write_text(f"torch=={torch.__version__}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SNNSPARSE_"))}
    env.update(PIP_CONSTRAINT=str(constraint), PIP_DISABLE_PIP_VERSION_CHECK="1", MAX_JOBS=env.get("MAX_JOBS", "2"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip"]
    _run(pip + ["wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)], env, tmp_path)
    (wheel,) = (tmp_path / "dist").glob("snnsparse-*.whl")
    assert wheel.name.startswith(f"snnsparse-{snnsparse.__version__}-")
    _run(pip + ["install", str(wheel)], env, tmp_path)
    probe = ("import json, importlib.metadata as md, torch, snnsparse; "
             "print(json.dumps({'file': snnsparse.__file__, 'version': snnsparse.__version__, "
             "'dist_version': md.version('snnsparse'), 'requires': md.requires('snnsparse'), "
             "'torch': torch.__version__, 'cuda': torch.version.cuda, "
             "'backends': {k: v is True for k, v in snnsparse.backends.available().items()}}))")
    info = json.loads(_run([str(py), "-c", probe], env, tmp_path).strip().splitlines()[-1])
    assert info["file"].startswith(str(venv)), "the installed copy is imported, not the source tree"
    assert info["version"] == info["dist_version"] == snnsparse.__version__
    assert info["torch"] == torch.__version__ and info["cuda"] == torch.version.cuda
    assert f"torch=={torch.__version__.split('+')[0]}" in info["requires"]
    assert info["backends"]["reference"] and info["backends"]["cpp"], info["backends"]
    report = _run([str(py), "-m", "snnsparse"], env, tmp_path)
    assert f"snnsparse {snnsparse.__version__}" in report and "cpp       available" in report
    assert "usage: snnsparse" in _run([str(venv / "bin" / "snnsparse"), "--help"], env, tmp_path)
