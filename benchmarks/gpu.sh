#!/usr/bin/env bash
# One unattended GPU benchmark (H100/H200, < 8 min): appends its numbers to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh            # from the repository root, venv active (pip install -e ".[test]")
#
# 1. benchmarks/pretrain_step.py --device cuda --dtype bf16 for ViT-S and ViT-B, eager, against
#    transformers' VideoMAEForPreTraining (equal work), and compiled when pretrain_step.py offers
#    --compile (checked with --help; skipped otherwise, and said so).
# 2. DDP vs DeepSpeed ZeRO-2 on one GPU: the same short pretraining run (synthetic shards written
#    here, videomae_small) through `accelerate launch` with dist.deepspeed=false / true; clips/s
#    (median of the last half of the logged steps) and the data-wait share per backend.
# Every stage has its own time limit and the whole script a budget (BUDGET_S, default 450 s):
# a stage gets min(its limit, what is left) and is skipped (and listed as skipped) below 20 s, so
# one hang cannot eat the budget; a failed stage is recorded with its exit code and the next runs.
# Status: written without a GPU and never run -- every number it will write is unmeasured so far.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=benchmarks/RESULTS.md
WORK=${GPU_BENCH_DIR:-$(mktemp -d /tmp/tubelet-gpu-XXXXXX)}
PY=${PYTHON:-python}
LOG="$WORK/gpu.log"
mkdir -p "$WORK"
peak=""
if command -v nvidia-smi >/dev/null; then
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)
  case "$gpu" in
    *H100*) peak="--peak-tflops 989" ;;   # H100 SXM dense bf16
    *H200*) peak="--peak-tflops 989" ;;   # same chip as H100 SXM
  esac
else
  gpu="(nvidia-smi not found)"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
start=$(date +%s)

{
  echo
  echo "## GPU run (\`benchmarks/gpu.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), commit $commit)"
  echo
  echo "GPU: $gpu; torch $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null)"
} >> "$OUT"

BUDGET_S=${BUDGET_S:-450}
stage() {  # stage NAME SECONDS CMD...: run with a time limit, append its output as a code block
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - start) ))
  if [ "$left" -lt 20 ]; then
    echo -e "\n### $name: skipped (budget of $BUDGET_S s spent)" >> "$OUT"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name" | tee -a "$LOG"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" > "$WORK/stage.out" 2>&1
  rc=$?
  cat "$WORK/stage.out" >> "$LOG"
  {
    echo
    echo "### $name ($(( $(date +%s) - t0 )) s, exit $rc$( [ $rc -eq 124 ] && echo ': time limit' ))"
    echo
    echo '```'
    grep -v -e '^\[rank' -e 'Warning' "$WORK/stage.out" | tail -n 25
    echo '```'
  } >> "$OUT"
  return 0
}

# ---- 1. step time, ours vs transformers --------------------------------------------------------
has_compile=0
$PY benchmarks/pretrain_step.py --help 2>/dev/null | grep -q -- "--compile" && has_compile=1
for size in small base; do
  tag=ViT-S; [ "$size" = base ] && tag=ViT-B
  # shellcheck disable=SC2086
  stage "pretrain_step $tag bf16 eager" 100 \
    $PY benchmarks/pretrain_step.py --device cuda --dtype bf16 --size "$size" --warmup 5 --repeats 20 $peak
  if [ "$has_compile" = 1 ]; then
    # shellcheck disable=SC2086
    stage "pretrain_step $tag bf16 compiled" 150 \
      $PY benchmarks/pretrain_step.py --device cuda --dtype bf16 --size "$size" --warmup 5 --repeats 20 --compile $peak
  fi
done
[ "$has_compile" = 1 ] || echo -e "\n(compiled step time not measured: benchmarks/pretrain_step.py has no --compile)" >> "$OUT"

# ---- 2. DDP vs ZeRO-2 on one GPU ---------------------------------------------------------------
stage "synthetic shards for the backend comparison" 60 \
  $PY -m launch synth --out "$WORK/synth" --videos-per-class 2 --pretrain-videos 256 --val-per-class 1 \
      --test-per-class 1 --size 64 --no-progress
for backend in ddp zero2; do
  if [ $backend = ddp ]; then flags="dist.deepspeed=false"; else flags="dist.deepspeed=true dist.zero_stage=2"; fi
  # shellcheck disable=SC2086
  stage "one GPU, $backend: 80 steps videomae_small on 16x64x64 clips" 120 \
    accelerate launch --config_file launch/accelerate/gpu-1node.yaml --num_processes 1 -m pretrain \
      --config configs/pretrain/synth_tiny.yaml data.shards="$WORK/synth/pretrain" run.dir="$WORK/run_$backend" \
      model.name=videomae_small data.img_size=64 data.batch_size=32 data.num_workers=8 run.max_steps=80 \
      run.save_every=1000 run.log_every=5 run.vis_every=0 run.progress=false run.tracker=none $flags
done
$PY - "$WORK" >> "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path
rows = []
for b in ("ddp", "zero2"):
    f = Path(sys.argv[1]) / f"run_{b}" / "metrics.jsonl"
    if not f.is_file():
        rows.append(f"| {b} | failed (no metrics) | | |")
        continue
    recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    tail = [r["clips_per_s"] for r in recs[len(recs) // 2:] if r.get("clips_per_s")]
    wait = [r["data_wait"] for r in recs[len(recs) // 2:] if r.get("data_wait") is not None]
    rows.append(f"| {b} | {statistics.median(tail):.1f} | {100 * statistics.median(wait):.0f} % | {len(recs)} |")
print("\n| backend (1 GPU) | clips/s (median, 2nd half) | data wait | records |\n|---|---|---|---|")
print("\n".join(rows))
EOF

echo -e "\nTotal: $(( $(date +%s) - start )) s. Full log: $LOG" >> "$OUT"
echo "done in $(( $(date +%s) - start )) s; results appended to $OUT (log $LOG)"
