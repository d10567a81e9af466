#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one call (one H100/H200, about 10 minutes), results under $OUT.
#   OUT=/some/dir bash benchmarks/gpu_run.sh
# Needs torch (CUDA), diffusers, transformers, torchao and cache-dit importable; runs from the source tree. Each
# step has its own time limit and log, so one failing step does not lose the others. Not run on the CPU machine.
set -u
OUT=${OUT:?set OUT to the output folder}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" CACHE_DIT_LOG_LEVEL=error
PY=${PYTHON:-python}
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, record the exit status
    local name=$1 limit=$2; shift 2
    echo "== $name ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name $?" >> "$OUT/status.txt"
    tail -n 25 "$OUT/$name.log"
}

{ nvidia-smi; $PY -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())"; $PY -c "import torchao, cache_dit; print('torchao', torchao.__version__, 'cache-dit', cache_dit.__version__)"; } > "$OUT/env.txt" 2>&1

# B-512, random weights, bf16, batch 1 and 16: plain vs SanaPipeline, compile, fp8, guidance interval, step cache.
step b512 330 $PY benchmarks/generate.py --geometry openuni-b-512 --device cuda --dtype bfloat16 --batch-sizes 1 16 \
    --rounds 2 --keep-going --arms sana compile fp8 guidance-interval step-cache fast --json "$OUT/b512-bf16.json" \
    --markdown "$OUT/benchmarks.md"
# L-1024 with offload + VAE tiling + int8 weights: the measured peak (the CPU machine only estimates it).
step l1024-memory 280 $PY benchmarks/memory.py --variant openuni-l-1024 --quantize int8 --measure-cuda --steps 4 \
    --json "$OUT/l1024-int8-offload-tiling.json"
cat "$OUT/status.txt"
