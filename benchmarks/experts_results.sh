#!/usr/bin/env bash
# docs/results/experts.md, training section: dense vs switch / topk / sigma_moe / fff FFNs at
# equal active FLOPs, and the SUT and MoEUT presets, on list_rank and listops, at one step
# budget for every row. Usage:
#   benchmarks/experts_results.sh OUT_DIR [TASK:ROW ...]
# (default: every TASK:ROW, TASK in list_rank listops, ROW in dense switch topk sigma_moe fff
# sut moeut). Runs one at a time, 1 thread (the results doc ran two such queues side by
# side); each run is evaluated on 300 valid + 300 ood examples and analysed; then the table
# of every run in OUT_DIR is printed (benchmarks/experts_table.py).
set -euo pipefail
OUT=${1:?usage: benchmarks/experts_results.sh OUT_DIR [TASK:ROW ...]}
shift
mkdir -p "$OUT"
STEPS=1500
# one budget and one optimiser for every row (the presets' own lr / schedule are overridden)
COMMON="run.steps=$STEPS schedule.total=$STEPS schedule.warmup=50 schedule.min_ratio=0.1
        optim.lr=0.003 run.threads=1 run.time_budget_s=null run.stop_at_acc=null
        run.eval_every=100 run.ckpt_every=$STEPS run.valid_batches=2 run.log_every=20"
# per task: its data knobs, batch, and DEPTH = block applications per token (core steps
# for core 1; MoEUT's G = 2 group repeats DEPTH / 2 times)
declare -A TASK=(
  # configs/demo_fixed.yaml's task (m 4–10, ood 12–16, token parts) and batch; no positions
  # (the edges are a set)
  [list_rank]="run.batch_size=64 task.name=list_rank task.preset=null task.knobs.m_min=4
               task.knobs.m_max=10 task.knobs.ood_m_min=12 task.knobs.ood_m_max=16
               task.knobs.n_labels=16 model.token_parts=true model.positions=none"
  # listops preset small (heights 1–4, ood 5–6), rotary positions (the brackets' order is
  # the task); batch 32 and depth 4 keep a run within ~8 min at 1 thread (its inputs are
  # ~3× list_rank's)
  [listops]="run.batch_size=32 task.name=listops task.preset=small task.knobs={}
             model.token_parts=false model.positions=rotary"
)
declare -A DEPTH=([list_rank]=8 [listops]=4)
# the FFN rows run on configs/demo_fixed.yaml (recurrent, d_model 64, d_ff 128, 1 prelude
# layer, core 1, max_steps DEPTH, fixed policy); 4 experts; a token's active FFN FLOPs equal the
# dense FFN's (switch: width 128; topk / sigma_moe: k 2 of width 64; fff: depth 2, one
# 128-wide leaf per token at inference — its training runs all 4 leaves)
declare -A ROW=(
  [dense]="configs/demo_fixed.yaml model.ffn.kind=dense"
  [switch]="configs/demo_fixed.yaml model.ffn.kind=switch model.ffn.knobs.n_experts=4"
  [topk]="configs/demo_fixed.yaml model.ffn.kind=topk model.ffn.knobs.n_experts=4 model.ffn.knobs.k=2"
  [sigma_moe]="configs/demo_fixed.yaml model.ffn.kind=sigma_moe model.ffn.knobs.n_experts=4 model.ffn.knobs.k=2"
  [fff]="configs/demo_fixed.yaml model.ffn.kind=fff model.ffn.knobs.depth=2 model.ffn.knobs.leaf_width=128"
  # the presets as shipped (d_model 64, d_ff 128), on the row's task
  [sut]="configs/sut.yaml"
  [moeut]="configs/moeut.yaml"
)
one() {
  local task=${1%%:*} row=${1##*:}
  local dir="$OUT/$task-$row" depth=${DEPTH[${1%%:*}]}
  [ "$row" = moeut ] && depth=$((depth / 2))
  rm -rf "$dir"
  # shellcheck disable=SC2086
  ponder train ${ROW[$row]} $COMMON ${TASK[$task]} model.max_steps=$depth --out "$dir" \
      --progress none > "$OUT/$task-$row.log" 2>&1
  ponder eval "$dir" --n 300 >> "$OUT/$task-$row.log" 2>&1
  ponder analyze "$dir" >> "$OUT/$task-$row.log" 2>&1
}
if [ $# -eq 0 ]; then
  set -- $(for t in list_rank listops; do for r in dense switch topk sigma_moe fff sut moeut; do echo "$t:$r"; done; done)
fi
for item in "$@"; do
  echo "$item start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) commit $(git rev-parse --short HEAD)"
  one "$item"
  echo "$item end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
done
python benchmarks/experts_table.py "$OUT"
