#!/usr/bin/env bash
# Install torch 2.13.0 into the venv given as $1 without ever pulling the multi-GB CUDA
# wheels on a machine that has no NVIDIA GPU.
set -euo pipefail
PY="$1/bin/python"
want=2.13.0
if "$PY" -c "import torch, sys; from packaging.version import Version as V; sys.exit(V(torch.__version__.split('+')[0]) != V('$want'))" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PY" -m pip install "torch==$want"
  exit 0
fi
# CPU only. A local CPU wheel (pip's find-links) is taken first; otherwise PyTorch's CPU index.
tmp=$(mktemp -d)
if "$PY" -m pip download --no-deps --no-index -d "$tmp" "torch==$want" >/dev/null 2>&1 \
   && ls "$tmp" | grep -q '+cpu'; then
  "$PY" -m pip install "torch==$want"
else
  "$PY" -m pip install "torch==$want" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
    --extra-index-url https://pypi.org/simple
fi
rm -rf "$tmp"
"$PY" - <<'PYEOF'
import torch
assert torch.version.cuda is None, "a CUDA build of torch was installed on a machine with no GPU"
print("torch", torch.__version__, "(CPU build)")
PYEOF
