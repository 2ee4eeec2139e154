#!/usr/bin/env bash
# GPU test and benchmark session on the lent accelerator machine (no Rust there):
# the `landscape` binary and the integration-test binary are built on the x86-64 dev
# machine and carried in .gpu/ (see docs/benchmarks.md). Usage, from the repo root:
#   benches/gpu_session.sh tests|torch|jax|bench OUTDIR
set -uo pipefail
phase=$1
out=$2
mkdir -p "$out"
# NVRTC must match the driver (CUDA 13 there): prefer the toolkit's libnvrtc.so.13.
nv=$(find /usr/local /opt -name 'libnvrtc.so.13*' 2>/dev/null | grep -v stub | head -1)
[ -n "$nv" ] && export LD_LIBRARY_PATH="$(dirname "$nv"):${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu_$phase.txt"
case $phase in
tests)
    .gpu/integration cuda_checks --skip no_device --test-threads 1 2>&1 | tee "$out/tests.log" | tail -25
    ;;
torch)
    PYTHONUNBUFFERED=1 python3 benches/peers/torch_hessian.py --device cuda --json "$out/torch.json" 2>&1 |
        grep -v Warning | tee "$out/torch.log"
    ;;
jax)
    JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1 python3 benches/peers/jax_hessian.py all --gn-samples 2000 \
        --json "$out/jax_raw.json" --bench-json "$out/jax.json" 2>&1 | tail -5
    ;;
bench)
    peers=()
    for f in "$out"/torch.json "$out"/jax.json; do [ -f "$f" ] && peers+=("$f"); done
    .gpu/landscape bench --devices cuda --reps 3 --json "$out/bench.json" --table "$out/bench.md" \
        ${peers:+--peers "${peers[@]}"} 2>&1 | tail -30
    ;;
esac
