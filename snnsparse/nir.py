"""NIR (Neuromorphic Intermediate Representation) import and export.

    model = ss.nir.load("net.nir", dt=1e-4)                # NIR graph (or file) -> snnsparse model
    ss.nir.save(model, "pruned.nir", example_inputs, dt=1e-4)  # snnsparse model -> NIR file

Needs the `nir` package (pip install "snnsparse[nir]"). Models are time-major: input [T, B, ...],
output [T, B, ...]; NIR shapes are per sample (no T, no B).

Layers: Affine / Linear -> SpikeLinear, Conv2d -> SpikeConv2d (event kernels for spikes; see
snnsparse.nn.layers for input_kind), AvgPool2d / SumPool2d (sum: divisor 1) per frame, Flatten
(NIR's dims are per sample: +2 for [T, B]), Input / Output. A node's inputs are summed, as NIR says;
graphs with cycles (recurrence) are refused.

Neurons. NIR's neurons are continuous-time; the discrete model is the forward-Euler step of length
`dt` of NIR's equations, with NIR's rule "fires when v > v_threshold, then v = v_reset":
    LIF:  v[t] = v[t-1] + dt / tau * (v_leak - v[t-1] + r * I[t])
    IF:   v[t] = v[t-1] + dt * r * I[t]
    CubaLIF (the current first, then the membrane from the new current, as snnTorch steps it):
          i[t] = i[t-1] + dt / tau_syn * (w_in * I[t] - i[t-1])
          v[t] = v[t-1] + dt / tau_mem * (v_leak - v[t-1] + r * i[t])
That step is run by one of two snnsparse neurons, each exact for a family of parameters; any other
parameters are refused (ValueError naming the node and the parameter), never approximated:
- snnTorch's family -> ss.nn.Leaky(beta, threshold, reset_mechanism="zero", reset_delay=False),
  which computes v = beta * v + I, fires at v > v_threshold and resets to 0 (snnTorch's arithmetic):
  LIF with v_leak = 0, v_reset = 0, r * dt / tau = 1, beta = 1 - dt / tau (per-neuron values kept);
  IF with v_reset = 0 and dt * r = 1 (beta = 1). v_threshold > 0 (per neuron allowed).
  CubaLIF -> ss.nn.Synaptic(alpha, beta, threshold, reset_mechanism="zero", reset_delay=False), which
  computes i = alpha * i + I, v = beta * v + i, fires at v > v_threshold and resets v to 0 (the current
  is not reset, as in NIR): with v_leak = 0, v_reset = 0, w_in * dt / tau_syn = 1, r * dt / tau_mem = 1,
  alpha = 1 - dt / tau_syn and beta = 1 - dt / tau_mem in [0, 1], v_threshold > 0 (per-neuron values
  kept). This is what snnTorch's exporter writes for snn.Synaptic (w_in = tau_syn / dt,
  r = tau_mem / dt, at its fixed dt = 1e-4: load such files with dt=1e-4) and its importer reads.
  CubaLIF has no SpikingJelly form: fires_at_threshold=True (v >= v_threshold) is refused for it.
- SpikingJelly's family -> ss.nn.LIF / ss.nn.IF (the fused kernels; SpikingJelly's LIFNode / IFNode
  arithmetic): LIF with v_leak = v_reset, tau / dt > 1 and r = 1 (decay_input=True:
  v + (I - (v - v_reset)) / tau') or r = tau / dt (decay_input=False), tau' = tau / dt; IF with
  dt * r = 1; uniform values. A LIF node that ss.nir.save wrote for a ss.nn.ParametricLIF carries its w
  ("snnsparse_plif_w") and loads as one. These neurons fire at
  v >= v_threshold, not NIR's v > v_threshold, so this family is used only where the graph says so
  (metadata written by ss.nir.save, "snnsparse_fires_at_threshold") or the caller passes
  fires_at_threshold=True (what SpikingJelly's own importer does with its exports).
"Equal" for r, r * dt / tau and dt * r means equal to within 4 float32 ulps (NIR files store
float32 parameters computed by the exporter, e.g. snnTorch's tau = dt / (1 - beta)).
Other CubaLIF parameters (a leak voltage, a reset potential, other input gains w_in / r, e.g. a
CubaLIF written for another dt) are refused with the parameter named.

Export writes each weight dense with its pruned entries as zeros (the NIR weight computes exactly
what the pruned layer computes), and the mask (bool, "snnsparse_mask") and its density
("snnsparse_density") in the node's metadata, so ss.nir.load restores the mask, also where a kept
weight is 0. Neurons: ss.nn.LIF / ParametricLIF -> LIF and ss.nn.IF -> IF in SpikingJelly's form (hard
reset only; SpikingJelly's exporter writes the same), ss.nn.Leaky -> LIF and ss.nn.Synaptic ->
CubaLIF in snnTorch's form (reset_mechanism "zero" with reset_delay=False, graded_spikes_factor 1,
threshold > 0 only: NIR has no subtractive or delayed reset; a decay of 1, or one whose time constant
dt / (1 - decay) does not read back as exactly the same float32 decay, is refused too). Surrogate
settings, which NIR has no field for, go in the metadata too.
"""
from __future__ import annotations

import operator
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .nn.layers import SpikeConv2d, SpikeLinear, _SpikeMixin
from .nn.leaky import Leaky
from .nn.lif import IF, LIF, ParametricLIF
from .nn.synaptic import Synaptic

MASK_KEY, DENSITY_KEY, FIRES_KEY = "snnsparse_mask", "snnsparse_density", "snnsparse_fires_at_threshold"
PLIF_W_KEY = "snnsparse_plif_w"  # a ParametricLIF's w (1/tau = sigmoid(w)), so that it loads as one
# Training settings NIR has no field for (the surrogate gradient), kept so that a round trip loses nothing.
SURROGATE_KEY, ALPHA_KEY, DETACH_KEY = "snnsparse_surrogate", "snnsparse_alpha", "snnsparse_detach_reset"
_ULPS = 4 * float(np.finfo(np.float32).eps)


def _nir():
    try:
        import nir
    except ImportError as e:
        raise ImportError(f"ss.nir needs the `nir` package (pip install 'snnsparse[nir]'): {e}") from None
    return nir


def _check_dt(dt, owner):
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"{owner}: dt must be a positive finite number of seconds (the time step), got {dt!r}")
    return float(dt)


# ------------------------------------------------------------------------------------------------
# The imported model
class Frames(nn.Module):
    """Applies a per-frame module (pooling) to [T, B, ...] by folding T into the batch."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        y = self.module(x.flatten(0, 1))
        return y.reshape(*x.shape[:2], *y.shape[1:])


class NIRModel(nn.Module):
    """A NIR graph run by snnsparse modules: forward(x [T, B, ...]) -> output [T, B, ...] (a dict
    {output name: tensor} when the graph has several outputs). `nodes` holds the modules by NIR node
    name ('.' replaced by '_'); `edges` are NIR's (source, target) names."""

    def __init__(self, modules: Dict[str, Optional[nn.Module]], edges: List[Tuple[str, str]], inputs: List[str],
                 outputs: List[str], order: List[str]):
        super().__init__()
        self.keys = {name: name.replace(".", "_") for name in order}
        self.nodes = nn.ModuleDict({self.keys[n]: m for n, m in modules.items() if m is not None})
        self.edges, self.inputs, self.outputs, self.order = list(edges), list(inputs), list(outputs), list(order)
        self.sources = {n: [s for s, t in edges if t == n] for n in order}

    def forward(self, x):
        values = {}
        for name in self.order:
            if name in self.inputs:
                values[name] = x
                continue
            ins = [values[s] for s in self.sources[name]]
            h = ins[0]
            for other in ins[1:]:  # NIR: a node's inputs are summed
                h = h + other
            key = self.keys[name]
            values[name] = self.nodes[key](h) if key in self.nodes else h
        outs = {name: values[name] for name in self.outputs}
        return outs[self.outputs[0]] if len(outs) == 1 else outs


# ------------------------------------------------------------------------------------------------
# import
def _arr(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def _uniform(v, node_name, what) -> float:
    a = _arr(v)
    if a.size == 0 or not np.all(a == a.flat[0]):
        raise ValueError(f"ss.nir.load: node {node_name!r}: {what} must be the same for every neuron to map onto "
                         f"ss.nn.LIF, got values from {a.min()} to {a.max()}")
    return float(a.flat[0])


def _equal(a, b) -> bool:
    a, b = _arr(a), _arr(b)
    return bool(np.all(np.isfinite(a)) and np.all(np.abs(a - b) <= _ULPS * np.maximum(np.abs(a), np.abs(b))))


def _meta_flag(node, key) -> Optional[bool]:
    v = getattr(node, "metadata", {}).get(key)
    return None if v is None else bool(np.asarray(v))


def _training_meta(node) -> dict:
    """surrogate / alpha / detach_reset written by ss.nir.save (absent in other exporters' files)."""
    meta, out = getattr(node, "metadata", {}), {}
    if SURROGATE_KEY in meta:
        v = np.asarray(meta[SURROGATE_KEY]).reshape(-1)[0] if not isinstance(meta[SURROGATE_KEY], (str, bytes)) \
            else meta[SURROGATE_KEY]
        out["surrogate"] = v.decode() if isinstance(v, bytes) else str(v)
    if ALPHA_KEY in meta:
        out["alpha"] = float(np.asarray(meta[ALPHA_KEY]))
    if DETACH_KEY in meta:
        out["detach_reset"] = bool(np.asarray(meta[DETACH_KEY]))
    return out


def _meta_out(surrogate, alpha, detach_reset=None) -> dict:
    meta = {SURROGATE_KEY: surrogate}
    if alpha is not None:  # ss.nn.LIF's None means the surrogate's default
        meta[ALPHA_KEY] = np.float64(alpha)
    if detach_reset is not None:
        meta[DETACH_KEY] = np.bool_(detach_reset)
    return meta


def _neuron_param(a: np.ndarray, shape) -> torch.Tensor:
    """A per-neuron parameter as a tensor broadcasting against [B, *shape] (a scalar when uniform)."""
    a = np.asarray(a, dtype=np.float32)
    if a.size and np.all(a == a.flat[0]):
        return torch.tensor(float(a.flat[0]), dtype=torch.float32)
    return torch.from_numpy(a.copy())


def _decay(tau, dt) -> np.ndarray:
    """snnTorch's decay rate of a NIR time constant at step dt: 1 - dt / tau (float64; stored float32)."""
    return 1.0 - dt / _arr(tau)


def _snntorch_family(node, dt, kind) -> Optional[str]:
    """Why the node is not in snnTorch's family (None when it is): its forward-Euler step must be
    snnTorch's decay-and-add with unit input gains and NIR's reset to 0 above a positive threshold."""
    if kind == "IF":
        gains, taus = [("dt * r", _arr(node.r) * dt)], []
    else:
        if not np.all(_arr(node.v_leak) == 0):
            return "v_leak != 0"
        if kind == "LIF":
            gains, taus = [("r * dt / tau", _arr(node.r) * dt / _arr(node.tau))], [("tau", node.tau)]
        else:  # CubaLIF
            gains = [("w_in * dt / tau_syn", _arr(node.w_in) * dt / _arr(node.tau_syn)),
                     ("r * dt / tau_mem", _arr(node.r) * dt / _arr(node.tau_mem))]
            taus = [("tau_syn", node.tau_syn), ("tau_mem", node.tau_mem)]
    for what, gain in gains:
        if not _equal(gain, 1.0):
            return f"{what} != 1"
    for what, tau in taus:
        d = _decay(tau, dt)
        if not np.all((d >= 0) & (d <= 1)):
            return f"1 - dt / {what} is outside [0, 1] ({what} < dt)"
    if not np.all(_arr(node.v_reset) == 0):
        return "v_reset != 0"
    if not np.all(_arr(node.v_threshold) > 0):
        return "v_threshold <= 0"
    return None


def _snntorch_neuron(cls, node, *decays):
    """ss.nn.Leaky / Synaptic with these decay rates and the node's v_threshold (per-neuron values
    kept), NIR's reset (to 0 at once) and the surrogate settings from the metadata."""
    shape = np.shape(node.v_threshold)
    train = _training_meta(node)
    train.pop("detach_reset", None)
    if "alpha" in train and cls is Synaptic:  # Synaptic's alpha is its current decay
        train["surrogate_alpha"] = train.pop("alpha")
    return cls(*(_neuron_param(d, shape) for d in decays), _neuron_param(node.v_threshold, shape),
               reset_mechanism="zero", reset_delay=False, step_mode="m", **train)


def _fires(node, fires_at_threshold) -> bool:
    meta = _meta_flag(node, FIRES_KEY)
    return meta if meta is not None else fires_at_threshold


def _synaptic(node, name, dt, fires_at_threshold):
    why = _snntorch_family(node, dt, "CubaLIF")
    if why is not None:
        raise ValueError(f"ss.nir.load: CubaLIF node {name!r} cannot be run exactly at dt={dt}: snnTorch's form "
                         f"(ss.nn.Synaptic: v_leak = 0, v_reset = 0, w_in * dt / tau_syn = 1, r * dt / tau_mem = 1, "
                         f"tau_syn >= dt, tau_mem >= dt, v_threshold > 0) is the only one: {why}")
    if _fires(node, fires_at_threshold):
        raise ValueError(f"ss.nir.load: CubaLIF node {name!r}: fires_at_threshold=True asks for v >= v_threshold, but "
                         f"ss.nn.Synaptic fires at NIR's v > v_threshold only (CubaLIF has no SpikingJelly form)")
    return _snntorch_neuron(Synaptic, node, _decay(node.tau_syn, dt), _decay(node.tau_mem, dt))


def _neuron(node, name, dt, fires_at_threshold, backend):
    kind = type(node).__name__
    fires = _fires(node, fires_at_threshold)
    why_not_leaky = _snntorch_family(node, dt, kind)
    if not fires and why_not_leaky is None:
        return _snntorch_neuron(Leaky, node, _decay(node.tau, dt) if kind == "LIF" else np.ones_like(_arr(node.r)))
    if kind == "IF":
        r = _uniform(node.r, name, "r")
        v_reset, v_th = _uniform(node.v_reset, name, "v_reset"), _uniform(node.v_threshold, name, "v_threshold")
        if_reason = None if _equal(r * dt, 1.0) else f"dt * r = {r * dt} != 1"
        if if_reason is None and fires:
            return IF(v_threshold=v_th, v_reset=v_reset, backend=backend, **_training_meta(node))
        forms = (f"snnTorch's form (ss.nn.Leaky, beta = 1: dt * r = 1, v_reset = 0, v_threshold > 0): "
                 f"{why_not_leaky or 'matches, but fires_at_threshold=True asks for v >= v_threshold'}; "
                 f"SpikingJelly's form (ss.nn.IF: dt * r = 1): {if_reason or 'matches'}")
        if if_reason is None:
            raise ValueError(f"ss.nir.load: IF node {name!r} is in SpikingJelly's form, which ss.nn.IF runs with "
                             f"SpikingJelly's rule v >= v_threshold, not NIR's v > v_threshold; pass "
                             f"fires_at_threshold=True to accept that (SpikingJelly's own importer does). {forms}")
        raise ValueError(f"ss.nir.load: IF node {name!r} cannot be run exactly at dt={dt}: {forms}")
    # SpikingJelly's family (ss.nn.LIF)
    tau = _uniform(node.tau, name, "tau") / dt
    r = _uniform(node.r, name, "r")
    v_leak, v_reset = _uniform(node.v_leak, name, "v_leak"), _uniform(node.v_reset, name, "v_reset")
    v_th = _uniform(node.v_threshold, name, "v_threshold")
    lif_reason = None
    if v_leak != v_reset:
        lif_reason = f"v_leak ({v_leak}) != v_reset ({v_reset})"
    elif not (np.isfinite(tau) and tau > 1):
        lif_reason = f"tau / dt = {tau} is not > 1"
    elif not (_equal(r, 1.0) or _equal(r, tau)):
        lif_reason = f"r = {r} is neither 1 nor tau / dt = {tau}"
    if lif_reason is None and fires:
        w = getattr(node, "metadata", {}).get(PLIF_W_KEY)
        if w is not None:  # written by ss.nir.save for a ParametricLIF: its w, exactly
            plif = ParametricLIF(decay_input=_equal(r, 1.0), v_threshold=v_th, v_reset=v_reset, backend=backend,
                                 **_training_meta(node))
            with torch.no_grad():
                plif.w.copy_(torch.as_tensor(np.asarray(w)).reshape(()))
            if not _equal(1.0 / float(plif.k), tau):
                raise ValueError(f"ss.nir.load: LIF node {name!r}: metadata {PLIF_W_KEY!r} gives tau / dt = "
                                 f"{1.0 / float(plif.k)}, but the node's tau / dt is {tau}")
            return plif
        return LIF(tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=_equal(r, 1.0), backend=backend,
                   **_training_meta(node))
    forms = (f"snnTorch's form (ss.nn.Leaky: v_leak = 0, v_reset = 0, r * dt / tau = 1, v_threshold > 0): "
             f"{why_not_leaky or 'matches, but fires_at_threshold=True asks for v >= v_threshold'}; "
             f"SpikingJelly's form (ss.nn.LIF: v_leak = v_reset, r = 1 or tau / dt, tau / dt > 1): {lif_reason or 'matches'}")
    if lif_reason is None:
        raise ValueError(f"ss.nir.load: LIF node {name!r} is in SpikingJelly's form, which ss.nn.LIF runs with "
                         f"SpikingJelly's rule v >= v_threshold, not NIR's v > v_threshold; pass "
                         f"fires_at_threshold=True to accept that (SpikingJelly's own importer does). {forms}")
    raise ValueError(f"ss.nir.load: LIF node {name!r} cannot be run exactly at dt={dt}: {forms}")


def _mask_of(node, weight_shape, name) -> torch.Tensor:
    m = getattr(node, "metadata", {}).get(MASK_KEY)
    if m is None:
        return torch.ones(weight_shape, dtype=torch.bool)
    m = np.asarray(m)
    if m.shape != tuple(weight_shape) or not np.all((m == 0) | (m == 1)):
        raise ValueError(f"ss.nir.load: node {name!r}: metadata {MASK_KEY!r} must be a 0/1 array of the weight's "
                         f"shape {tuple(weight_shape)}, got {m.dtype} {m.shape}")
    return torch.from_numpy(m.astype(bool))


def _int(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])  # exporters write ints as 0-d or 1-element arrays


def _pair(v, name, what):
    a = np.asarray(v).astype(np.int64).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2:
        raise ValueError(f"ss.nir.load: node {name!r}: {what} must be one or two integers, got {v!r}")
    return tuple(int(i) for i in a)


def _layer(node, name, dt, fires_at_threshold, backend):
    nir = _nir()
    if isinstance(node, (nir.Input, nir.Output)):
        return None
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.from_numpy(np.asarray(node.weight, dtype=np.float32).copy())
        if w.dim() != 2:
            raise ValueError(f"ss.nir.load: node {name!r}: weight must be 2-D [out, in], got shape {tuple(w.shape)}")
        bias = isinstance(node, nir.Affine)
        m = SpikeLinear(w.shape[1], w.shape[0], bias=bias, backend=backend)
        b = torch.from_numpy(np.asarray(node.bias, dtype=np.float32).copy()) if bias else None
        return m._load_dense(w, b, _mask_of(node, w.shape, name))
    if isinstance(node, nir.Conv2d):
        w = torch.from_numpy(np.asarray(node.weight, dtype=np.float32).copy())
        padding = node.padding if isinstance(node.padding, str) else _pair(node.padding, name, "padding")
        groups = _int(node.groups)
        m = SpikeConv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), _pair(node.stride, name, "stride"),
                        padding, _pair(node.dilation, name, "dilation"), groups, bias=True, backend=backend)
        b = torch.from_numpy(np.asarray(node.bias, dtype=np.float32).copy())
        return m._load_dense(w, b, _mask_of(node, w.shape, name))
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k, s, p = (_pair(node.kernel_size, name, "kernel_size"), _pair(node.stride, name, "stride"),
                   _pair(node.padding, name, "padding"))
        divisor = 1 if isinstance(node, nir.SumPool2d) else None
        return Frames(nn.AvgPool2d(k, s, p, divisor_override=divisor))
    if isinstance(node, nir.Flatten):
        start, end = _int(node.start_dim), _int(node.end_dim)
        return nn.Flatten(start + 2 if start >= 0 else start, end + 2 if end >= 0 else end)
    if isinstance(node, (nir.LIF, nir.IF)):
        return _neuron(node, name, dt, fires_at_threshold, backend)
    if isinstance(node, nir.CubaLIF):
        return _synaptic(node, name, dt, fires_at_threshold)
    raise ValueError(f"ss.nir.load: node {name!r} is a NIR {type(node).__name__}, which ss.nir.load does not "
                     f"support (supported: Input, Output, Affine, Linear, Conv2d, AvgPool2d, SumPool2d, Flatten, "
                     f"LIF, IF, CubaLIF)")


def _topological(nodes, edges) -> List[str]:
    preds = {n: set() for n in nodes}
    for s, t in edges:
        for end in (s, t):
            if end not in preds:
                raise ValueError(f"ss.nir.load: edge ({s!r}, {t!r}) names {end!r}, which is not a node of the graph")
        preds[t].add(s)
    order, done = [], set()
    ready = [n for n in nodes if not preds[n]]
    while ready:
        n = ready.pop(0)
        order.append(n)
        done.add(n)
        for m in nodes:
            if m not in done and m not in ready and preds[m] <= done:
                ready.append(m)
    if len(order) != len(nodes):
        cyc = sorted(set(nodes) - done)
        raise ValueError(f"ss.nir.load: the graph has a cycle (recurrent connections) through {cyc}; ss.nir.load "
                         f"supports feed-forward graphs only")
    return order


def load(graph_or_path, dt: float, *, fires_at_threshold: bool = False, backend: str = "auto") -> NIRModel:
    """An snnsparse model (NIRModel) computing the NIR graph (a nir.NIRGraph, or a path to a NIR file)
    at time step `dt` seconds; see the module docstring for how neurons map and what is refused.
    fires_at_threshold=True accepts SpikingJelly's rule v >= v_threshold for LIF nodes in SpikingJelly's
    form (ss.nn.LIF). backend: for every Spike* layer and LIF."""
    nir = _nir()
    dt = _check_dt(dt, "ss.nir.load")
    if not isinstance(fires_at_threshold, bool):
        raise TypeError(f"ss.nir.load: fires_at_threshold must be a bool, got {type(fires_at_threshold).__name__}")
    from . import backends
    backends.check_usable(backend, "ss.nir.load", dense=False)
    graph = graph_or_path
    if not isinstance(graph, nir.NIRNode):
        graph = nir.read(str(graph_or_path))
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"ss.nir.load: expected a nir.NIRGraph or a path to a NIR file, got {type(graph).__name__}")
    names = list(graph.nodes)
    order = _topological(names, graph.edges)
    inputs = [n for n in names if isinstance(graph.nodes[n], nir.Input)]
    outputs = [n for n in names if isinstance(graph.nodes[n], nir.Output)]
    if len(inputs) != 1 or not outputs:
        raise ValueError(f"ss.nir.load: the graph must have one Input node and at least one Output node, got inputs "
                         f"{inputs} and outputs {outputs}")
    for n in names:
        if n not in inputs and not any(t == n for _, t in graph.edges):
            raise ValueError(f"ss.nir.load: node {n!r} has no incoming edge")
        if isinstance(graph.nodes[n], nir.NIRGraph):
            raise ValueError(f"ss.nir.load: node {n!r} is a subgraph (snnTorch writes recurrent layers so); "
                             f"ss.nir.load supports feed-forward graphs of primitive nodes only")
    modules = {n: _layer(graph.nodes[n], n, dt, fires_at_threshold, backend) for n in names}
    return NIRModel(modules, graph.edges, inputs, outputs, order)


# ------------------------------------------------------------------------------------------------
# export
class _ExportTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        leaves = (_SpikeMixin, LIF, IF, ParametricLIF, Leaky, Synaptic, Frames, nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten)
        return isinstance(m, leaves) or super().is_leaf_module(m, qualname)


def _mask_meta(layer: nn.Module) -> dict:
    mask = layer.weight_mask.detach().cpu().numpy().astype(bool) if isinstance(layer, _SpikeMixin) else \
        np.ones(tuple(layer.weight.shape), dtype=bool)
    return {MASK_KEY: mask, DENSITY_KEY: np.float64(mask.mean() if mask.size else 0.0)}


def _dense_weight(layer) -> np.ndarray:
    w = layer.weight.detach()
    if isinstance(layer, _SpikeMixin):
        w = torch.where(layer.weight_mask, w, torch.zeros_like(w))  # a pruned synapse is absent: 0, even if NaN
    return w.cpu().numpy().astype(np.float32)


def _time_constant(decay: torch.Tensor, what, tau_name, shape, dt, where) -> np.ndarray:
    """NIR's time constant dt / (1 - decay) of a Leaky / Synaptic decay rate (clamped to [0, 1] as the
    neuron uses it), checked to load back (ss.nir.load: float32(1 - dt / tau)) as exactly this rate."""
    d = np.broadcast_to(decay.detach().clamp(0, 1).cpu().numpy().astype(np.float64), shape)
    if np.any(d >= 1):
        raise ValueError(f"{where}: {what} = 1 (no decay) has no finite NIR {tau_name}")
    tau = dt / (1.0 - d)
    back = _decay(tau, dt).astype(np.float32).astype(np.float64)
    if not np.array_equal(back, d):
        i = np.flatnonzero(back != d)[0]
        raise ValueError(f"{where}: {what} = {float(d.flat[i])!r} cannot be written exactly as NIR's {tau_name} at "
                         f"dt={dt} (1 - dt / {tau_name} reads back as {float(back.flat[i])!r}; a float32 {what} far "
                         f"from 0 can)")
    return tau


def _export_node(module, name, in_shape, dt):
    """The NIR node of one module; in_shape is its input's per-sample shape (no T, B)."""
    nir = _nir()
    where = f"ss.nir.save: module {name!r} ({type(module).__name__})"
    if isinstance(module, (SpikeLinear, nn.Linear)) and type(module) in (SpikeLinear, nn.Linear):
        w = _dense_weight(module)
        if module.bias is None:
            return nir.Linear(weight=w, metadata=_mask_meta(module))
        return nir.Affine(weight=w, bias=module.bias.detach().cpu().numpy().astype(np.float32), metadata=_mask_meta(module))
    if type(module) in (SpikeConv2d, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(f"{where}: padding_mode {module.padding_mode!r} has no NIR form (zeros only)")
        w = _dense_weight(module)
        bias = (module.bias.detach().cpu().numpy().astype(np.float32) if module.bias is not None
                else np.zeros(w.shape[0], dtype=np.float32))
        return nir.Conv2d(input_shape=tuple(in_shape[-2:]), weight=w, stride=module.stride, padding=module.padding,
                          dilation=module.dilation, groups=module.groups, bias=bias, metadata=_mask_meta(module))
    if isinstance(module, Frames):
        module = module.module
    if type(module) is nn.AvgPool2d:
        pool = module
        k = _pair(pool.kernel_size, name, "kernel_size")
        s = _pair(pool.stride if pool.stride is not None else pool.kernel_size, name, "stride")
        p = _pair(pool.padding, name, "padding")
        if pool.ceil_mode or (any(p) and not pool.count_include_pad) or pool.divisor_override not in (None, 1):
            raise ValueError(f"{where}: this AvgPool2d configuration (ceil_mode, count_include_pad=False with padding "
                             f"or a divisor other than 1) has no NIR form")
        cls = nir.SumPool2d if pool.divisor_override == 1 else nir.AvgPool2d
        return cls(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
    if type(module) is nn.Flatten:
        start, end = module.start_dim, module.end_dim
        if 0 <= start < 2 or 0 <= end < 2:
            raise ValueError(f"{where}: flattens the time or batch dimension (start_dim={start}, end_dim={end}); "
                             f"a time-major model flattens from dim 2 on")
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=start - 2 if start >= 0 else start,
                           end_dim=end - 2 if end >= 0 else end)
    if isinstance(module, (IF, ParametricLIF)):
        if module.v_reset is None:
            raise ValueError(f"{where}: soft reset (v_reset=None) has no NIR form (NIR's neurons reset to v_reset)")
        if module.step_mode != "m":
            raise ValueError(f"{where}: step_mode 's'; export needs a time-major model (step_mode 'm')")
        full = lambda v: np.full(tuple(in_shape), v, dtype=np.float64)  # noqa: E731
        meta = {FIRES_KEY: np.bool_(True), **_meta_out(module.surrogate, module.alpha, module.detach_reset)}
        if isinstance(module, IF):
            return nir.IF(r=full(1.0 / dt), v_threshold=full(module.v_threshold), v_reset=full(module.v_reset),
                          metadata=meta)
        tau = 1.0 / float(module.k.detach())  # NIR's LIF with SpikingJelly's map of 1/k; w kept for a lossless load
        meta[PLIF_W_KEY] = np.float64(module.w.detach().double().cpu())
        return nir.LIF(tau=full(tau * dt), r=full(1.0 if module.decay_input else tau), v_leak=full(module.v_reset),
                       v_threshold=full(module.v_threshold), v_reset=full(module.v_reset), metadata=meta)
    if isinstance(module, LIF):
        if module.v_reset is None:
            raise ValueError(f"{where}: soft reset (v_reset=None) has no NIR form (NIR's LIF resets to v_reset)")
        if module.step_mode != "m":
            raise ValueError(f"{where}: step_mode 's'; export needs a time-major model (step_mode 'm')")
        tau = float(module.tau)
        full = lambda v: np.full(tuple(in_shape), v, dtype=np.float64)  # noqa: E731
        return nir.LIF(tau=full(tau * dt), r=full(1.0 if module.decay_input else tau), v_leak=full(module.v_reset),
                       v_threshold=full(module.v_threshold), v_reset=full(module.v_reset),
                       metadata={FIRES_KEY: np.bool_(True),
                                 **_meta_out(module.surrogate, module.alpha, module.detach_reset)})
    if isinstance(module, (Leaky, Synaptic)):
        kind = "LIF" if isinstance(module, Leaky) else "CubaLIF"
        if module.reset_mechanism != "zero" or module.reset_delay or module.step_mode != "m":
            raise ValueError(f"{where}: only reset_mechanism='zero' with reset_delay=False in step_mode 'm' is NIR's "
                             f"{kind} (reset to 0 at once); got reset_mechanism={module.reset_mechanism!r}, "
                             f"reset_delay={module.reset_delay}, step_mode={module.step_mode!r}")
        if not bool((module.graded_spikes_factor == 1).all()):
            raise ValueError(f"{where}: graded_spikes_factor != 1 has no NIR form")
        shape = tuple(in_shape)
        thr = np.broadcast_to(module.threshold.detach().cpu().numpy().astype(np.float64), shape).copy()
        if np.any(thr <= 0):  # reset to 0 leaves the membrane above threshold: snnTorch's next step is not NIR's
            raise ValueError(f"{where}: threshold <= 0 has no NIR form here (ss.nir.load refuses v_threshold <= 0: "
                             f"reset to 0, such a neuron is not below threshold, where snnTorch's update and NIR's "
                             f"differ)")
        zeros = np.zeros(shape)
        meta = {FIRES_KEY: np.bool_(False), **(
            _meta_out(module.surrogate, module.surrogate_alpha) if module.spike_fn is None else {})}
        if kind == "LIF":
            tau = _time_constant(module.beta, "beta", "tau", shape, dt, where)
            return nir.LIF(tau=tau, r=tau / dt, v_leak=zeros, v_threshold=thr, v_reset=zeros.copy(), metadata=meta)
        tau_syn = _time_constant(module.alpha, "alpha", "tau_syn", shape, dt, where)
        tau_mem = _time_constant(module.beta, "beta", "tau_mem", shape, dt, where)
        return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=zeros, v_threshold=thr,
                           v_reset=zeros.copy(), w_in=tau_syn / dt, metadata=meta)
    raise ValueError(f"{where} has no NIR form in ss.nir.save (supported: SpikeLinear / nn.Linear, SpikeConv2d / "
                     f"nn.Conv2d, nn.AvgPool2d, nn.Flatten, ss.nn.LIF / IF / ParametricLIF, ss.nn.Leaky)")


def to_nir(model: nn.Module, example_inputs: torch.Tensor, dt: float):
    """The nir.NIRGraph of a time-major snnsparse model (see save)."""
    nir = _nir()
    dt = _check_dt(dt, "ss.nir.save")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 3:
        raise ValueError("ss.nir.save: example_inputs must be a time-major tensor [T, B, ...] (it gives every layer's "
                         "per-sample input shape)")
    gm = fx.GraphModule(model, _ExportTracer().trace(model))
    shapes: Dict[str, tuple] = {}

    def record(name):
        def hook(module, args, out):  # returns None: the output is kept
            shapes.setdefault(name, tuple(args[0].shape[2:]))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in gm.named_modules() if n]
    try:
        with torch.no_grad():
            result = gm(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    nodes, edges = {}, []
    sources: Dict[fx.Node, List[str]] = {}  # fx node -> NIR node names whose sum it is
    input_shape = tuple(example_inputs.shape[2:])
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if nodes:
                raise ValueError("ss.nir.save: the model must take one input tensor")
            nodes["input"] = nir.Input(input_type={"input": np.array(input_shape)})
            sources[node] = ["input"]
        elif node.op == "call_module":
            args = [a for a in node.args if isinstance(a, fx.Node)]
            if len(args) != 1 or len(node.args) != 1 or node.kwargs:
                raise ValueError(f"ss.nir.save: module {node.target!r} is called with {len(node.args)} arguments; "
                                 f"NIR nodes take one input")
            module = gm.get_submodule(node.target)
            name = node.target
            if isinstance(model, NIRModel) and name.startswith("nodes."):  # keep the imported graph's names
                by_key = {k: n for n, k in model.keys.items()}
                name = by_key.get(name[len("nodes."):], name)
            if name in nodes:  # a module called twice: two NIR nodes (with the same parameters)
                name = f"{name}_{node.name}"
            if node.target not in shapes:
                raise ValueError(f"ss.nir.save: module {node.target!r} did not run on example_inputs")
            nodes[name] = _export_node(module, node.target, shapes[node.target], dt)
            edges += [(s, name) for s in sources[args[0]]]
            sources[node] = [name]
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2 \
                and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs:
            sources[node] = sources[node.args[0]] + sources[node.args[1]]  # NIR sums a node's inputs
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise ValueError("ss.nir.save: the model must return one tensor")
            if not isinstance(result, torch.Tensor):
                raise ValueError("ss.nir.save: the model must return one tensor")
            nodes["output"] = nir.Output(output_type={"output": np.array(tuple(result.shape[2:]))})
            edges += [(s, "output") for s in sources[out]]
        else:
            raise ValueError(f"ss.nir.save: {node.op} {node.target!r} ({node.format_node()}) has no NIR form; export "
                             f"takes models of snnsparse layers and neurons, pooling, flatten and sums of branches")
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"snnsparse_dt": np.float64(dt)})
    return graph


def save(model: nn.Module, path, example_inputs: torch.Tensor, dt: float):
    """Write `model` (time-major, see the module docstring) to the NIR file `path` at time step `dt`
    seconds, pruned weights dense with zeros and masks in the metadata; returns the nir.NIRGraph."""
    nir = _nir()
    graph = to_nir(model, example_inputs, dt)
    nir.write(str(path), graph)
    return graph
