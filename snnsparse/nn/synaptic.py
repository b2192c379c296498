"""Synaptic: the current-based (2nd-order) LIF neuron of snnTorch's `snn.Synaptic`, step for step.

A synaptic current `syn` filters the input and the membrane integrates the current. Per step, with
alpha and beta clamped to [0, 1] every step as snnTorch does:

    reset = spike_fn(mem - threshold)                 # from the previous step's mem, detached
    syn = alpha * syn + x
    "subtract": mem = (beta * mem + syn) - reset * threshold
    "zero":     mem = (beta * mem + syn) - (beta * mem + syn) * reset   # the current is not reset
    "none":     mem = beta * mem + syn
    spk = spike_fn(mem - threshold) * graded_spikes_factor   # spike_fn(u) = (u > 0)
    reset_delay=False: do_reset = spk / graded_spikes_factor - reset, then
        "subtract": mem = mem - do_reset * threshold;  "zero": mem = mem - do_reset * mem

Unlike snn.Leaky's "zero" ((1 - reset) * mem before the decay), Synaptic's zeroes the whole new
membrane (input included) one step after a spike. The module runs snnTorch's torch operations in its
order (pure torch, as ss.nn.Leaky, whose options, step modes and conventions it shares:
snnsparse/nn/leaky.py), so float32 results and gradients equal snnTorch's bit for bit.

Calling conventions (as ss.nn.Leaky, with both states):
- step_mode="s" (what convert() gives a snnTorch model): forward(x, syn=None, mem=None) returns spk,
  or (spk, syn, mem) when snnTorch would (init_hidden=False or output=True: `returns_mem`); the
  states are kept in `self.syn` / `self.mem` between calls; reset() clears them.
- step_mode="m": x is [T, ...]; returns spikes [T, ...] (or (spikes, syn, mem)); each call starts
  from zeros unless stateful=True.
"""
from typing import Optional

import torch

from .leaky import SnnTorchNeuron


class Synaptic(SnnTorchNeuron):
    """snnTorch's Synaptic neuron, exactly (see the module docstring).

    alpha (the current's decay), beta (the membrane's), threshold, graded_spikes_factor: floats or
    tensors (per neuron, broadcast against the input as in snnTorch). learn_alpha / learn_beta /
    learn_threshold make them Parameters. The spike function's surrogate parameter is
    `surrogate_alpha` here (`alpha` is snnTorch's name for the current decay). Other options
    (reset_mechanism, reset_delay, surrogate, spike_fn, step_mode, stateful, returns_mem): as
    ss.nn.Leaky.
    """

    DECAYS, STATES = ("alpha", "beta"), ("syn", "mem")

    def __init__(self, alpha, beta, threshold=1.0, *, learn_alpha: bool = False, learn_beta: bool = False,
                 **options):
        super().__init__({"alpha": (alpha, learn_alpha), "beta": (beta, learn_beta)}, threshold, **options)

    init_synaptic = SnnTorchNeuron.reset_mem  # snnTorch's deprecated name

    def _decay(self, x, syn, mem):
        syn = self.alpha.clamp(0, 1) * syn + x
        return syn, self.beta.clamp(0, 1) * mem + syn

    def _integrate(self, x, reset, syn, mem):
        syn_new, mem_new = self._decay(x, syn, mem)
        if self.reset_mechanism == "subtract":
            mem_new = mem_new - reset * self.threshold
        elif self.reset_mechanism == "zero":
            # snnTorch recomputes the decayed membrane and subtracts it times reset: the same two graphs
            # here, so that the gradients of a per-neuron alpha / beta are summed in its order. Its
            # `syn -= 0 * reset` changes no bit of syn (s - 0 == s for every float, -0 and NaN too)
            # and passes gradients through unchanged: left out.
            mem_new = mem_new - self._decay(x, syn, mem)[1] * reset
        return syn_new, mem_new

    def forward(self, x: torch.Tensor, syn: Optional[torch.Tensor] = None, mem: Optional[torch.Tensor] = None):
        return self._forward(x, (syn, mem))
