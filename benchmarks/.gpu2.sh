export PYDISTILL_QUIET=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1; unset TRITON_INTERPRET
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
for d in cpu cuda; do python3 benchmarks/gpu_probe_errors.py $d 2>&1 | tail -3; done
for f in match_loss trajectory_loss diff_augment sum_tree; do
  timeout 200 python3 -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_$f.py > $OUT/test_$f.log 2>&1; echo "$f rc=$?: $(tail -1 $OUT/test_$f.log)"; grep -E "^FAILED|Fatal|test_.*py\", line" $OUT/test_$f.log | head -8
done
