#!/usr/bin/env bash
# One device-machine session: build the extension for the GPU there, run the op tests on CUDA (real Triton,
# no interpreter), then the op benchmarks. Results and logs go to $OUT (device tool) or ./gpu_out.
#   bash benchmarks/gpu_session.sh [tests|bench|all] [extra pytest args]
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"; mkdir -p "$OUT"
what="${1:-all}"; shift || true
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1 PYDISTILL_QUIET=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
t0=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1 || { tail -n 60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c "import pydistill, torch; print('backends', pydistill.backends())"
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_match_loss.py tests/test_trajectory_loss.py \
    tests/test_diff_augment.py tests/test_sum_tree.py "$@" 2>&1 | tee "$OUT/tests.log" | tail -n 40
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/run_all.py --device cuda 2>&1 | tee "$OUT/bench.log" | tail -n 80
  cp benchmarks/results/*.md benchmarks/results/*.json "$OUT/" 2>/dev/null
fi
