"""Norse's LIF neurons (norse.torch LIFCell, LIF, LIFBoxCell, LIFBox) in ss.nn.convert.

Norse integrates a current-based LIF (norse.torch.functional.lif.lif_feed_forward_step), per step:
    i = i + x;  v = v + dt * tau_mem_inv * ((v_leak - v) + i);  i = i - dt * tau_syn_inv * i
    z = (v - v_th > 0);  v = (1 - z) * v + z * v_reset
(the Box variants drop the current state). No snnsparse neuron computes that exactly: ss.nn.LIF
(SpikingJelly's charge v + (x - (v - v_reset)) / tau) divides where Norse multiplies by
dt * tau_mem_inv, has no synaptic current, and fires at v >= v_th where Norse fires at v > v_th;
ss.nn.Leaky (snnTorch's) decays by beta * v with no v_leak. Any of them would change spikes at
rounding boundaries, so convert leaves Norse neurons as they are and says why in its report (the
Linear / Conv2d layers around them are converted as usual).
"""
import torch.nn as nn

_NORSE_LIF = ("LIFCell", "LIF", "LIFBoxCell", "LIFBox", "LIFRecurrentCell", "LIFRecurrent")


def is_norse_lif(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ in _NORSE_LIF and cls.__module__.startswith("norse.")


def norse_converter(module: nn.Module):
    """(reason, builder) for convert: Norse LIF neurons are always left, with the reason."""
    name = type(module).__name__
    return (f"Norse {name} integrates i += x; v += dt*tau_mem_inv*((v_leak - v) + i) and fires at v > v_th: no "
            f"snnsparse neuron computes that update exactly (ss.nn.LIF divides by tau and fires at v >= v_th, "
            f"ss.nn.Leaky decays by beta * v), so it is left as Norse's module", None)
