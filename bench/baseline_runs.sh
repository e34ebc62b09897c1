#!/bin/bash
# Short deterministic world runs of every algorithm (plus the anchor / EMA / FedProx hooks and RLTF-SD fed by the
# authors' grpo.* keys), for comparing two versions of the code with bench/compare_baseline.py:
#
#   bench/baseline_runs.sh OLD_CHECKOUT /tmp/base && bench/baseline_runs.sh . /tmp/new
#   for d in /tmp/base/*/; do python bench/compare_baseline.py "$d" "/tmp/new/$(basename "$d")"; done
set -u
SRC=$(cd "$1" && pwd); OUT=$2
PY=${PYTHON:-python}
mkdir -p "$OUT"
cd "$SRC" || exit 2
export PYTHONPATH=$SRC OMP_NUM_THREADS=1
COMMON="fl.rounds=2 fl.clients_per_round=3 fl.local_rollout_steps=8 fl.local_train_steps=4 data.max_eval_examples=24"
run() {
  name=$1; shift
  rm -rf "${OUT:?}/$name"
  # shellcheck disable=SC2086
  $PY -m fedspear run $COMMON "$@" output_dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
}
for a in spear feedback_sft grpo opsd rltf_sd; do run "$a" algorithm.name=$a; done
run spear_hooks algorithm.name=spear spear.lambda_anchor=0.05 spear.ema_decay=0.3 fl.fedprox_mu=0.1
run fsft_hooks algorithm.name=feedback_sft spear.lambda_anchor=0.05 spear.ema_decay=0.3 spear.lambda_lose=0.5
run grpo_prox algorithm.name=grpo fl.fedprox_mu=0.1 spear.lambda_anchor=0.05 spear.ema_decay=0.3
run rltf_grpo_keys algorithm.name=rltf_sd grpo.num_generations=2 grpo.beta_kl=0.1 grpo.reward_scale=2.0 fl.fedprox_mu=0.1
