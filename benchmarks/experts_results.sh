#!/usr/bin/env bash
# docs/results/experts.md: dense vs switch / topk / sigma_moe FFNs at equal active FLOPs on
# list_rank and listops (small step budgets). Usage: benchmarks/experts_results.sh OUT_DIR
# Trains 8 runs (2 at a time), evaluates each on 300 valid + 300 ood examples, analyses them
# and prints the table (benchmarks/experts_table.py).
set -euo pipefail
OUT=${1:?usage: benchmarks/experts_results.sh OUT_DIR}
mkdir -p "$OUT"
COMMON="model.max_steps=4 run.batch_size=32 run.steps=300 schedule.total=300 schedule.warmup=30
        run.threads=1 run.time_budget_s=null run.stop_at_acc=null run.eval_every=100
        run.ckpt_every=300 run.valid_batches=2"
declare -A TASK=(
  [list_rank]=""
  [listops]="task.name=listops task.preset=small task.knobs={} model.token_parts=false"
)
declare -A FFN=(
  [dense]="model.ffn.kind=dense"
  [switch]="model.ffn.kind=switch model.ffn.knobs.n_experts=4"
  [topk]="model.ffn.kind=topk model.ffn.knobs.n_experts=4 model.ffn.knobs.k=2"
  [sigma_moe]="model.ffn.kind=sigma_moe model.ffn.knobs.n_experts=4 model.ffn.knobs.k=2"
)
one() {
  local task=$1 ffn=$2 dir="$OUT/$1-$2"
  # shellcheck disable=SC2086
  ponder train configs/demo_fixed.yaml $COMMON ${TASK[$task]} ${FFN[$ffn]} --out "$dir" --progress none
  ponder eval "$dir" --n 300 >/dev/null
  ponder analyze "$dir" >/dev/null
}
for task in list_rank listops; do
  for pair in "dense switch" "topk sigma_moe"; do
    set -- $pair
    one "$task" "$1" & one "$task" "$2" & wait
  done
done
python benchmarks/experts_table.py "$OUT"
