#!/usr/bin/env bash
# The GPU table in one go (under 8 minutes on one GPU):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]                  # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --device cpu --dry-run OUT # the same steps, tiny, on a CPU (checks the script)
#
# 1. `minimaxad benchmark --device cuda`: eager, fused, compiled (inductor + CUDA graphs), bf16,
#    fp16, and ONNX Runtime's CUDA provider when onnxruntime-gpu is installed; variant N, 256 px,
#    batch 1 and 16 (images/s, latency, peak GPU memory, share of the matmul limit).
# 2. training images/s (benchmarks/gpu_training_speed.py): fp32, bf16 autocast, bf16 +
#    channels-last, and that compiled; variant N, 256 px, batch 16; peak GPU memory.
# 3. a 1-GPU `torchrun --standalone --nproc-per-node 1 -m minimaxad fit --preset demo` (nccl) on
#    the synthetic dataset; its metrics.json.
# 4. OUT_DIR/gpu_check.json: all of it, with the GPU's name, driver, torch and CUDA versions.
#
# Every step runs under a time limit; any failure stops the script with a message and a non-zero
# exit code (set -euo pipefail): a half-filled table is never written as if complete.
set -euo pipefail

DEVICE=cuda
DRY_RUN=0
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1 (use --device cuda|cpu, --dry-run, OUT_DIR)" >&2; exit 2 ;;
        *) OUT="$1"; shift ;;
    esac
done
OUT="${OUT:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
    echo "gpu_check.sh: $OUT exists and is not empty; give a new folder" >&2
    exit 2
fi
mkdir -p "$OUT"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
START=$SECONDS

fail() { echo "gpu_check.sh: FAILED: $*" >&2; exit 1; }
step() { echo; echo "== [$((SECONDS - START)) s] $*"; }
# run LIMIT_SECONDS NAME COMMAND...: the command's output goes to OUT/NAME.log and the terminal
run() {
    local limit=$(( $1 * LIMIT_SCALE )) name="$2"; shift 2
    local rc
    set +e
    timeout --foreground "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    [[ $rc == 0 ]] || fail "$name: exit code $rc (124: over its ${limit} s limit); see $OUT/$name.log"
}

LIMIT_SCALE=1
if [[ $DRY_RUN == 1 ]]; then
    LIMIT_SCALE=10  # a busy CPU is far slower than a GPU even at these sizes
    # tiny sizes: checks that every step runs and writes what the next one reads
    BENCH_ARGS=(--backends fused --image-sizes 64 --batch-sizes 1 --seconds 0.2)
    TRAIN_ARGS=(--variants unireplknet_f --size 64 --batch 2 --steps 2 --warmup 1)
    FIT_ARGS=(--max-steps 2 --image-size 64 --batch-size 2 --epochs 1)
    DATA_ARGS="n_train=6, n_test_good=2, n_test_defect=1, image_size=64"
else
    BACKENDS=(eager fused compiled bf16 fp16)
    if "$PYTHON" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
        BACKENDS+=(onnxruntime)
    else
        echo "note: ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu): its row is skipped"
    fi
    BENCH_ARGS=(--backends "${BACKENDS[@]}" --image-sizes 256 --batch-sizes 1 16 --seconds 2)
    TRAIN_ARGS=(--variants unireplknet_n --size 256 --batch 16 --steps 20 --warmup 3 --compile)
    FIT_ARGS=()
    DATA_ARGS="image_size=128"
fi

step "machine"
if [[ $DEVICE == cuda ]]; then
    command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: is this a machine with an NVIDIA GPU and driver?"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
fi
"$PYTHON" - "$DEVICE" "$OUT/machine.json" <<'EOF' || fail "PyTorch cannot use --device $DEVICE"
import json, sys, torch, minimaxad
device, out = sys.argv[1], sys.argv[2]
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device")
    if torch.cuda.device_count() < 1:
        sys.exit("no CUDA device")
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if device == "cuda" else None,
        "minimaxad": getattr(minimaxad, "__version__", None)}
print(json.dumps(info)); open(out, "w").write(json.dumps(info, indent=2) + "\n")
EOF

step "1/3 inference: minimaxad benchmark --device $DEVICE"
run 240 benchmark "$PYTHON" -m minimaxad benchmark --device "$DEVICE" "${BENCH_ARGS[@]}" --output "$OUT/benchmark.json"
[[ -s "$OUT/benchmark.json" ]] || fail "minimaxad benchmark wrote no $OUT/benchmark.json"

step "2/3 training images/s (fp32, bf16, bf16 + channels-last, compiled)"
run 150 training "$PYTHON" "$HERE/gpu_training_speed.py" --device "$DEVICE" "${TRAIN_ARGS[@]}" --output "$OUT/training.json"

step "3/3 torchrun, 1 process ($([[ $DEVICE == cuda ]] && echo nccl || echo gloo)): fit --preset demo"
"$PYTHON" -c "from minimaxad.data import generate_synthetic_dataset as g; g('$OUT/synthetic', $DATA_ARGS)" \
    || fail "could not write the synthetic dataset to $OUT/synthetic"
run 150 torchrun torchrun --standalone --nproc-per-node 1 -m minimaxad fit --preset demo \
    --data "$OUT/synthetic" --output "$OUT/fit-demo" --device "$DEVICE" --quiet "${FIT_ARGS[@]}"
[[ -s "$OUT/fit-demo/metrics.json" ]] || fail "the torchrun fit wrote no $OUT/fit-demo/metrics.json"
if [[ $DEVICE == cuda ]]; then
    grep -qi "nccl" "$OUT/torchrun.log" "$OUT/fit-demo/train.log" 2>/dev/null \
        || echo "note: the logs do not name nccl; check $OUT/fit-demo/train.log"
fi

step "summary: $OUT/gpu_check.json"
"$PYTHON" - "$OUT" "$((SECONDS - START))" <<'EOF' || fail "could not write $OUT/gpu_check.json"
import json, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
bench = json.loads((out / "benchmark.json").read_text())
training = json.loads((out / "training.json").read_text())
summary = {
    "machine": json.loads((out / "machine.json").read_text()),
    "seconds": seconds,
    "inference": bench["rows"], "inference_not_measured": bench.get("not_measured", {}),
    "matmul_limit": bench["machine"],
    "training": training["rows"],
    "torchrun_fit_demo_metrics": json.loads((out / "fit-demo" / "metrics.json").read_text()).get("mean"),
}
peaks = [r.get("peak_memory_mb") for r in bench["rows"] + training["rows"] if r.get("peak_memory_mb")]
summary["peak_memory_mb"] = max(peaks) if peaks else None
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"{'backend':<14}{'size':>5}{'batch':>6}{'img/s':>9}{'peak MB':>9}")
for r in bench["rows"]:
    print(f"{r['backend']:<14}{r['image_size']:>5}{r['batch']:>6}{r['images_per_second']:>9.1f}"
          f"{(r.get('peak_memory_mb') or 0):>9.0f}")
for r in training["rows"]:
    print("training", {k: r.get(k) for k in ("precision", "channels_last", "compiled", "images_per_second",
                                              "peak_memory_mb", "error")})
failed = list(bench.get("not_measured", {})) + [r for r in training["rows"] if "error" in r]
if failed:
    sys.exit(f"not measured: {failed}")
EOF
echo "gpu_check.sh: done in $((SECONDS - START)) s; results in $OUT/gpu_check.json"
