#!/usr/bin/env bash
# One script for the GPU machine (H100/H200, no network): build, GPU tests, compute-sanitizer,
# benchmarks. Installs nothing from the network. Results (CSV, markdown table, logs) go to $OUT.
#
#   bash bench/gpu_check.sh                     # all stages: build test sanitize sj bench
#   bash bench/gpu_check.sh build test sanitize # a subset (stages always run in the order below)
#   bash bench/gpu_check.sh build sj bench      # a second call: build is skipped when still there
#   QUICK=1 bash bench/gpu_check.sh bench       # fewer repetitions / densities
#   SWEEP=1 BENCH_CASES=conv,linear bash bench/gpu_check.sh bench   # also other Triton tile sizes
#
# Stages: build     FORCE_CUDA=1 build of snnsparse._C (pip -e, else setup.py build_ext --inplace);
#                   skipped when a CUDA build of snnsparse._C already imports (warm machine)
#         test      pytest tests -k "triton or cuda"  (GPU tests; the triton ones run compiled)
#         sanitize  compute-sanitizer memcheck + racecheck over tests/test_cuda_ops.py (cuda backend only)
#         sj        SpikingJelly's native spike_linear CUDA extension from the carried sdist
#         bench     bench/bench_gpu.py (every GPU backend vs cuDNN/cuBLAS fp32/TF32/bf16, SpikingJelly)
# One device command may run 600 s and a machine idle for 30 s is given back (with /tmp and the
# build): a full run can exceed 600 s, so use two calls, each building what it needs:
#   bash bench/gpu_check.sh build test sanitize      then      bash bench/gpu_check.sh build sj bench
#
# SpikingJelly 2.0 on the GPU machine (it has no network and no spikingjelly): prepare on the dev
# machine, in the repo root (.whl/ is git-ignored; it travels only when named in `carry`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl spikingjelly==2.0.0                       # pure-Python wheel (Triton LIF, torch paths)
#   python3 -m pip download --no-deps --no-binary=:all: -d .whl spikingjelly==2.0.0   # sdist: native CUDA
# then run on the device with carry [".whl"] and command `bash bench/gpu_check.sh`.
# The wheel goes to /tmp/site (PYTHONPATH). From the sdist only ops/spike_linear/native.cu is built
# (SJ_BUILD_NATIVE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0, --no-build-isolation) into /tmp/sjnative, which then
# shadows the wheel; if that build fails the log says so and sparse_linear(strategy="sparse") rows are
# marked "native CUDA extension not built" (SpikingJelly then runs a torch reference: not a baseline).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/bench/out/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
PY=${PYTHON:-$(command -v python3 || echo /opt/torch/.venv/bin/python3)}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(build test sanitize sj bench)
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET   # compiled Triton on the GPU

say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
want() { local s; for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

say "stages: ${STAGES[*]}; python $PY"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  command -v nvcc >/dev/null && nvcc --version | tail -2
} 2>&1 | tee -a "$LOG"

# --- SpikingJelly (carried wheel / sdist) ---------------------------------------------------
if ls .whl/spikingjelly-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/spikingjelly-*.whl 2>&1 | tail -2 | tee -a "$LOG"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  say "spikingjelly wheel installed to /tmp/site"
else
  say "no .whl/spikingjelly-*.whl carried: SpikingJelly baselines will be skipped"
fi
if want sj && ls .whl/spikingjelly-*.tar.gz >/dev/null 2>&1 && [ ! -d /tmp/sjnative/spikingjelly ]; then
  say "building SpikingJelly native spike_linear from the sdist"
  rm -rf /tmp/sjsrc && mkdir -p /tmp/sjsrc && tar xzf .whl/spikingjelly-*.tar.gz -C /tmp/sjsrc
  src=$(ls -d /tmp/sjsrc/spikingjelly-*)
  find "$src/ops" -name native.cu ! -path "*/spike_linear/*" -delete   # only the kernel we compare against
  ( cd "$src" && SJ_BUILD_NATIVE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 \
      timeout 420 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/sjnative . ) \
      >"$OUT/sj_native_build.log" 2>&1 \
    && say "SpikingJelly native spike_linear built" \
    || say "SpikingJelly native build FAILED (see sj_native_build.log): sparse_linear rows will be marked"
fi
[ -d /tmp/sjnative/spikingjelly ] && export PYTHONPATH=/tmp/sjnative${PYTHONPATH:+:$PYTHONPATH}

# --- build snnsparse ------------------------------------------------------------------------
built=$("$PY" -c "import snnsparse._C, torch; print('cuda' in torch.ops.snnsparse.build_info())" 2>/dev/null)
has_cuda=$("$PY" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null)
if want build && [ "$has_cuda" != "True" ]; then
  say "no CUDA device visible to torch: build skipped (this script is for the GPU machine)"
elif want build && [ "$built" = "True" ]; then
  say "snnsparse._C with CUDA already built: build skipped"
elif want build; then
  say "building snnsparse (FORCE_CUDA=1)"
  export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  if ! timeout 540 "$PY" -m pip install -q --no-build-isolation --no-deps --no-index -e . >>"$LOG" 2>&1; then
    say "pip -e failed; trying setup.py build_ext --inplace"
    timeout 540 "$PY" setup.py build_ext --inplace >>"$LOG" 2>&1 || say "build FAILED (cuda backend will be unavailable)"
    # without an install, snnsparse.triton_kernels (setup.py package_dir: kernels/) needs a link
    [ -e snnsparse/triton_kernels ] || ln -s ../kernels snnsparse/triton_kernels
  fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import snnsparse as ss
for k, v in ss.backends.available().items():
    print(f"backend {k}: {v}")
EOF

# --- tests ----------------------------------------------------------------------------------
rc_test=0
if want test; then
  say "pytest tests -k 'triton or cuda'"
  timeout 540 "$PY" -m pytest -q tests -k "triton or cuda" -p no:cacheprovider -ra 2>&1 | tee "$OUT/pytest_gpu.log" | tail -40 | tee -a "$LOG"
  rc_test=${PIPESTATUS[0]}
  say "pytest exit $rc_test"
fi

# --- compute-sanitizer (cuda backend) -------------------------------------------------------
if want sanitize; then
  cuda_ok=$("$PY" -c "import snnsparse as ss; print(ss.backends.available()['cuda'] is True)" 2>/dev/null)
  if [ "$cuda_ok" = "True" ] && [ -f tests/test_cuda_ops.py ] && command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      say "compute-sanitizer --tool $tool tests/test_cuda_ops.py"
      timeout 400 compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
          "$PY" -m pytest -q -x tests/test_cuda_ops.py -p no:cacheprovider >"$OUT/sanitizer_$tool.log" 2>&1
      rc=$?
      tail -5 "$OUT/sanitizer_$tool.log" | tee -a "$LOG"
      say "compute-sanitizer $tool exit $rc (99 = errors found, 124 = timeout)"
    done
  else
    say "sanitize skipped: cuda backend available=$cuda_ok, tests/test_cuda_ops.py present=$([ -f tests/test_cuda_ops.py ] && echo yes || echo no), compute-sanitizer=$(command -v compute-sanitizer || echo missing)"
  fi
fi

# --- benchmarks -----------------------------------------------------------------------------
if want bench; then
  say "bench/bench_gpu.py"
  timeout 560 "$PY" bench/bench_gpu.py --csv "$OUT/bench_gpu.csv" --md "$OUT/bench_gpu.md" \
      --profile "$OUT/profile_triton.txt" \
      ${QUICK:+--quick} ${SWEEP:+--sweep} ${BENCH_CASES:+--cases $BENCH_CASES} 2>&1 | tee -a "$LOG" | tail -60
  say "bench exit ${PIPESTATUS[0]}"
fi
say "done; files in $OUT"
exit $rc_test
