#!/usr/bin/env bash
# The GPU measurements the README leaves open, as one short run for a machine with a CUDA GPU (issues' "where a GPU
# is available"): ViT vs ClustViT, CWFID test images, oracle clusters, batch 1, 518x518 (37 x 14, DINOv2's size);
# PyTorch in fp32 / fp16 / bf16 (autocast), then ONNX Runtime's CUDA and TensorRT providers where this Python's
# onnxruntime has them (onnxruntime-gpu; TensorRT also fp16). Random weights: speed and tokens do not depend on them
# (the clusters come from the ground truth). Models: Table I's backbones (ViT, CTS, ClustViT k3 ip3, and with
# decoder merging), Segmenter head at batch 1; the UPerNet pair; batch 8 (pad / split); scripts/profile_torch.py's
# per-image kernel time vs wall time. The log (gpu_rows.log) and JSON go to $OUT
# (default out/gpu), the tables also into README.md's sections gpu, gpu-uper and gpu-batch8 (copied to $OUT too).
#
#   bash scripts/gpu_rows.sh                         # python3 with torch, timm, onnx(runtime), safetensors, yaml, cv2
#   DEVICE=cpu SIZE=112 NUM=2 ROUNDS=1 WARMUP=0 bash scripts/gpu_rows.sh   # a dry run of the same steps on the CPU
#   PRECISIONS="fp32 fp16" PROFILE_PRECISIONS=fp16 ROUNDS=6 WARMUP=2 bash scripts/gpu_rows.sh   # shorter (README's)
# NO_GRAPHS=1 leaves out the CUDA-graph rows (they are also left out when test_cuda_graphs fails on that machine).
#
# It needs the CWFID test split: CLUSTVIT_CWFID_ROOT (default ../shared/data/cwfid); where ../shared does not travel,
# copy test images + annotations + train_test_split.yaml into an ignored folder and point the variable at it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-out/gpu}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-518}
NUM=${NUM:-100}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_rows.log") 2>&1  # everything printed, also in $OUT
MODELS=(cwfid_vit cwfid_cts cwfid_k3_ip3 cwfid_k3_ip3_decmerge)
COMMON=(--images cwfid:test --num-images "$NUM" --size "$SIZE" --oracle-clusters
        --device "$DEVICE" --warmup "$WARMUP" --rounds "$ROUNDS" --quiet)
if [ -n "${PRECISIONS:-}" ]; then read -ra PRECISIONS <<< "$PRECISIONS"
elif [ "$DEVICE" = cpu ]; then PRECISIONS=(fp32 bf16); else PRECISIONS=(fp32 fp16 bf16); fi
GRAPHS=(--cuda-graphs)  # every torch row also replayed from CUDA graphs (clustvit_core.cuda_graphs); NO_GRAPHS=1: not
if [ -n "${NO_GRAPHS:-}" ]; then GRAPHS=(); fi

"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except ImportError:
    print("onnxruntime: not installed")
EOF

echo "== torch: ${PRECISIONS[*]}, batch 1"
if [ "$DEVICE" != cpu ] && [ ${#GRAPHS[@]} -gt 0 ]; then
    echo "== CUDA graphs: replay equals eager (test/test_cuda_graphs.py)"
    "$PY" -m pytest -q -p no:cacheprovider test/test_cuda_graphs.py -k cuda \
        || { echo "CUDA graph test failed: no graph rows"; GRAPHS=(); }
fi

"$PY" -m clustvit_core.benchmark --models "${MODELS[@]}" "${COMMON[@]}" "${GRAPHS[@]}" --precisions "${PRECISIONS[@]}" \
    --json "$OUT/benchmark_torch.json" \
    --update-readme README.md --readme-section gpu || echo "torch rows failed"

echo "== torch, UPerNet head: ${PRECISIONS[*]:0:2}"
"$PY" -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 head=uper uper_channels=256 "${COMMON[@]}" "${GRAPHS[@]}" \
    --precisions "${PRECISIONS[@]:0:2}" --json "$OUT/benchmark_uper.json" \
    --update-readme README.md --readme-section gpu-uper || echo "UPerNet rows failed"

B8=$([ "$DEVICE" = cpu ] && echo fp32 || echo fp16)
echo "== torch: batch 8, pad / split, $B8"
"$PY" -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 "${COMMON[@]}" "${GRAPHS[@]}" --precisions "$B8" \
    --batch 8 --batch-modes pad split --json "$OUT/benchmark_batch8.json" \
    --update-readme README.md --readme-section gpu-batch8 || echo "batch 8 rows failed"

echo "== where the time goes (torch.profiler)"
for p in ${PROFILE_PRECISIONS:-${PRECISIONS[@]:0:2}}; do
    "$PY" scripts/profile_torch.py --models "${MODELS[@]}" --device "$DEVICE" --precision "$p" --size "$SIZE" \
        --num-images "$(( NUM < 6 ? NUM : 6 ))" --rounds "$(( ROUNDS < 3 ? ROUNDS : 3 ))" || echo "profile $p failed"
done 2>&1 | grep -v USDT || true

PROVIDERS=$("$PY" -c "
try:
    import onnxruntime as o
    have = o.get_available_providers()
except ImportError:
    have = []
print(' '.join(n for n, full in (('cuda', 'CUDAExecutionProvider'), ('tensorrt', 'TensorrtExecutionProvider')) if full in have))")
if [ "$DEVICE" = cpu ]; then PROVIDERS=cpu; fi
if [ -n "$PROVIDERS" ]; then
    echo "== onnxruntime: $PROVIDERS"
    # shellcheck disable=SC2086
    "$PY" -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 "${COMMON[@]}" --backends onnxruntime --providers $PROVIDERS \
        --precisions "${PRECISIONS[@]:0:2}" --json "$OUT/benchmark_onnxruntime.json" || echo "ONNX rows failed"
else
    echo "== onnxruntime: no CUDA or TensorRT provider in this Python (pip install onnxruntime-gpu); ONNX rows skipped"
fi
cp README.md "$OUT/README.md"
