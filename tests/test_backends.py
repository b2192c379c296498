"""Backend registry: available(), precedence (argument > use() > env > auto), fallbacks."""
import pytest
import torch

import snnsparse as ss


def test_available_lists_every_backend_with_reason():
    av = ss.backends.available()
    assert set(av) == {"reference", "cpp", "cuda", "triton"}
    assert av["reference"] is True
    for name, v in av.items():
        assert v is True or (isinstance(v, str) and v), f"{name} must be True or a reason"
    if not torch.cuda.is_available():
        assert av["cuda"] is not True or ss._ext.build_info() == "cpu,cuda"


def test_extension_loads_and_declares_ops():
    reason = ss._ext.load()
    assert reason is None, reason
    assert ss._ext.build_info() in ("cpu", "cpu,cuda")
    for op in ("spike_linear_fwd", "spike_linear_bwd", "spike_conv2d_fwd", "spike_conv2d_bwd", "lif_fwd",
               "lif_bwd"):
        assert hasattr(torch.ops.snnsparse, op), op


def test_precedence(monkeypatch):
    monkeypatch.delenv(ss.backends.ENV_VAR, raising=False)
    assert ss.backends.requested() == "auto"
    monkeypatch.setenv(ss.backends.ENV_VAR, "reference")
    assert ss.backends.requested() == "reference"
    with ss.backends.use("auto"):
        assert ss.backends.requested() == "auto"
        assert ss.backends.requested("reference") == "reference"
    assert ss.backends.requested() == "reference"


def test_auto_resolves_cpu_to_cpp_or_reference(monkeypatch):
    monkeypatch.delenv(ss.backends.ENV_VAR, raising=False)
    name, _ = ss.backends.resolve("auto", torch.device("cpu"), "spike_linear")
    assert name == ("cpp" if ss.backends.available()["cpp"] is True else "reference")
    with ss.backends.use("reference"):
        assert ss.backends.resolve("auto", torch.device("cpu"))[0] == "reference"


def test_env_var_routes_calls(monkeypatch):
    calls = []
    ref = ss.backends.get("reference")
    orig = ref.spike_linear

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(ref, "spike_linear", spy)
    monkeypatch.setenv(ss.backends.ENV_VAR, "reference")
    ss.functional.spike_linear(torch.ones(2, 3), torch.randn(4, 3))
    assert calls == [1]


def test_use_rejects_unknown_and_missing():
    with pytest.raises(ValueError, match="backend must be one of"):
        with ss.backends.use("fast"):
            pass
    if not torch.cuda.is_available():
        with pytest.raises(ss.backends.BackendUnavailable):
            ss.backends.resolve("cuda", torch.device("cpu"))


@pytest.mark.slow  # a subprocess (heavy); make test runs every slow test too
def test_import_without_extension_reports_reason():
    code = ("import sys; sys.modules['snnsparse._C'] = None\n"
            "import snnsparse as ss, torch\n"
            "av = ss.backends.available()\n"
            "assert av['reference'] is True\n"
            "assert 'snnsparse._C could not be loaded' in av['cpp'], av['cpp']\n"
            "y = ss.functional.spike_linear(torch.ones(2, 3), torch.ones(4, 3))\n"
            "assert float(y.sum()) == 24.0\n")
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
