#!/usr/bin/env bash
# Install torch 2.13.0 into the venv given as $1 without ever pulling the multi-GB CUDA
# wheels on a machine that has no NVIDIA GPU.
#
# No package index is named here: pip takes its sources from the standard pip environment and
# configuration (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, pip.conf), else its default
# index. On a machine without a GPU the wheel pip would choose is inspected first (pip install
# --dry-run --report, metadata only): a CUDA build (one that requires nvidia-* packages, or whose
# version says +cuXXX) is refused with a message saying how to point pip at CPU wheels, and after
# the install torch.version.cuda is checked to be None.
set -euo pipefail
PY="$1/bin/python"
want=2.13.0
if "$PY" -c "import torch, sys; from packaging.version import Version as V; sys.exit(V(torch.__version__).public != V('$want').public)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PY" -m pip install "torch==$want"
  exit 0
fi
# CPU only: which torch wheel would pip install from the sources it is configured with?
report=$(mktemp)
trap 'rm -f "$report"' EXIT
if ! "$PY" -m pip install --dry-run --ignore-installed --no-deps --quiet --report "$report" "torch==$want"; then
  echo "install_torch.sh: pip found no torch==$want in its configured sources" >&2
  exit 1
fi
"$PY" - "$report" "$want" <<'PYEOF'
import json, sys
try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
report, want = json.load(open(sys.argv[1])), sys.argv[2]
(item,) = [i for i in report["install"] if i["metadata"]["name"].lower() == "torch"]
version = item["metadata"]["version"]
reqs = [Requirement(r) for r in item["metadata"].get("requires_dist", [])]
# nvidia-* requirements that apply here (their markers: Linux only, so macOS wheels are not CUDA).
nvidia = [r.name for r in reqs if r.name.lower().startswith("nvidia-") and (r.marker is None or r.marker.evaluate({"extra": ""}))]
if "+cu" in version or nvidia:
    sys.exit(f"install_torch.sh: this machine has no NVIDIA GPU, but pip would install a CUDA build of torch "
             f"({version}{', which requires ' + ', '.join(nvidia[:3]) + ', ...' if nvidia else ''}) from "
             f"{item['download_info']['url'].split('/torch-')[0]}. Point pip at CPU wheels of torch {want} "
             f"(PyTorch publishes a CPU-only index): set PIP_INDEX_URL or PIP_EXTRA_INDEX_URL (or index-url / "
             f"extra-index-url in pip.conf), or PIP_FIND_LINKS to a folder holding the CPU wheel, then rerun.")
print(f"install_torch.sh: installing torch {version} (CPU build)")
PYEOF
"$PY" -m pip install "torch==$want"
"$PY" - <<'PYEOF'
import torch
assert torch.version.cuda is None, "a CUDA build of torch was installed on a machine with no GPU"
print("torch", torch.__version__, "(CPU build)")
PYEOF
