export PYDISTILL_QUIET=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1; unset TRITON_INTERPRET
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
(python3 benchmarks/gpu_probe_errors.py cpu; python3 benchmarks/gpu_probe_throw.py) 2>&1 | grep -v Warn | tail -8
timeout 150 python3 -m pytest -q -p no:cacheprovider -rf --tb=short -k "gradcheck_triton" tests/test_diff_augment.py 2>&1 | tail -2
for f in match_loss sum_tree; do timeout 200 python3 -m pytest -v -p no:cacheprovider -rf --tb=short tests/test_$f.py > $OUT/test_$f.log 2>&1; echo "$f rc=$?"; grep -E "FAILED|Fatal" $OUT/test_$f.log | head -5; grep -E "PASSED|FAILED" $OUT/test_$f.log | tail -1; done
timeout 330 python3 benchmarks/run_all.py --device cuda > $OUT/bench.log 2>&1; echo "bench rc=$?"; cp benchmarks/results/*H100* $OUT/ 2>/dev/null; grep -E "^\|" $OUT/bench.log | head -80
