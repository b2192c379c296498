"""Drop-in torch layers: SpikeLinear, SpikeConv1d, SpikeConv2d (nn.Linear / nn.Conv1d / nn.Conv2d with a
weight_mask and event-driven kernels for binary input), the fused multi-step neurons (LIF, IF, ParametricLIF),
snnTorch's Leaky and Synaptic (exact pure-torch twins), and convert()."""
from .layers import SpikeConv1d, SpikeConv2d, SpikeLinear  # noqa: F401
from .lif import IF, LIF, FusedNeuron, ParametricLIF  # noqa: F401
from .leaky import Leaky  # noqa: F401
from .synaptic import Synaptic  # noqa: F401
from .convert import ConvertRecord, ConvertWarning, convert  # noqa: F401
from .fuse import fuse_conv_bn  # noqa: F401
from .optimize import optimize_for_inference  # noqa: F401
