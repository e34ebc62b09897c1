#!/usr/bin/env bash
# One prepared GPU check (issues 6 and 15): the shared bench and the realistic Qwen2-0.5B-shaped setting, SPEAR and
# GRPO, and SPEAR's generation paths side by side on the realistic setting (continuous batching, static cache with
# compiled decoding, the authors' template without the shared-prefix cache). Issue 15's GPU targets: SPEAR round
# <= 10 s and generation >= 10,000 tokens/s on the realistic setting.
# Run on a device machine from the repo root, with transformers/peft wheels in .whl and ../shared/bench copied to
# .gpu/bench (both carried). Writes JSON results to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" | tee -a "$OUT/gpu.txt"
timeout 200 python3 bench/round_time.py --bench-dir /tmp/bench --rounds 6 --algorithms ${ALGOS:-spear,grpo} --json \
  > "$OUT/bench_shared.json" 2> "$OUT/bench_shared.err"; tail -3 "$OUT/bench_shared.err"; cat "$OUT/bench_shared.json"
timeout 300 python3 bench/round_time.py --bench-dir /tmp/bench --realistic --rounds 3 --algorithms ${ALGOS:-spear,grpo} \
  --json > "$OUT/bench_realistic.json" 2> "$OUT/bench_realistic.err"; tail -3 "$OUT/bench_realistic.err"
cat "$OUT/bench_realistic.json"
V=spear,spear@gen.scheduler=continuous,spear@gen.cache=static,spear@gen.revision_template=authors@gen.prefix_cache=false
timeout 420 python3 bench/round_time.py --bench-dir /tmp/bench --realistic --rounds 3 --algorithms ${PATHS:-$V} \
  --json > "$OUT/bench_paths.json" 2> "$OUT/bench_paths.err"; tail -3 "$OUT/bench_paths.err"
cat "$OUT/bench_paths.json"
