#!/usr/bin/env bash
# One GPU-machine session: build the extension there, run the op tests and the launch-overhead counts on CUDA (real
# Triton, no interpreter; one process per file, in parallel), then the op benchmarks (per call, throughput,
# new-storage and draw+augment rows). Logs and results go to $OUT (or ./gpu_out).
#   bash benchmarks/gpu/gpu_session.sh [tests|bench|all]
# The tests that call compiled CPU ops with bad input are deselected: on the GPU image (torch 2.11) any C++ exception
# thrown from a CPU op of an extension crashes the process (benchmarks/gpu/gpu_probe_throw.py reproduces it).
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"; mkdir -p "$OUT"
what="${1:-all}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1 PYDISTILL_QUIET=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1 || { tail -n 60 "$OUT/build.log"; exit 1; }
python3 -c "import pydistill; print('backends', pydistill.backends())"
if [ "$what" = tests ] || [ "$what" = all ]; then
  D="not test_errors and not test_opcheck_compiled_ops"
  # test_launch_overhead: ops dispatched + kernel launches per call of the Triton paths (issue #2 budgets)
  for f in match_loss trajectory_loss diff_augment sum_tree launch_overhead; do
    (timeout 300 python3 -m pytest -q -p no:cacheprovider -rf --tb=short -k "$D" "tests/test_$f.py" > "$OUT/t_$f.log" 2>&1
     echo "$f rc=$? $(tail -n 1 "$OUT/t_$f.log")") &
  done
  wait
  grep -h "^FAILED" "$OUT"/t_*.log | head -n 20
  # the cached-table ticket kernels under real concurrency: many calls, several streams, evictions, no syncs
  timeout 300 python3 benchmarks/gpu/gpu_stress_ticket.py > "$OUT/stress_ticket.log" 2>&1; echo "stress_ticket rc=$?"
  tail -n 5 "$OUT/stress_ticket.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/ops/run_all.py --device cuda --tag ops > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
  cp benchmarks/results/*.md benchmarks/results/*.json "$OUT/" 2>/dev/null
  grep -E "^\|" "$OUT/bench.log" | tail -n 80
fi
