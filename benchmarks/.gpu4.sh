export PYDISTILL_QUIET=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1; unset TRITON_INTERPRET
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
# the env-crash tests (C++ CPU throws, see README) are deselected here
D="not test_errors and not test_opcheck_compiled_ops"
for f in match_loss trajectory_loss diff_augment sum_tree; do (timeout 240 python3 -m pytest -q -p no:cacheprovider -rf --tb=line -k "$D" tests/test_$f.py > $OUT/t_$f.log 2>&1; echo "$f rc=$? $(tail -1 $OUT/t_$f.log)") & done
(timeout 240 python3 -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_determinism.py tests/test_methods.py -k "gpu or cuda or recompute or end_to_end" > $OUT/t_misc.log 2>&1; echo "misc rc=$? $(tail -1 $OUT/t_misc.log)") &
wait; grep -h "^FAILED" $OUT/t_*.log | head -10
timeout 300 python3 benchmarks/run_all.py --device cuda --ops match_loss,trajectory_loss,diff_augment --tag ops-v2 > $OUT/bench.log 2>&1; echo "bench rc=$?"; cp benchmarks/results/*ops-v2* $OUT/ 2>/dev/null; grep -E "^\|" $OUT/bench.log | grep -v "reference |" | head -70
