#!/usr/bin/env bash
# Issue 13's three CPU targets, in interleaved rounds (ours, JAX, ours, JAX, ...) on
# this machine, with the GEMM rate of the same run:
#   (a) dense full Hessian of a 64-32-32-10 MLP over all 1,797 digits: the wall time
#       of `landscape hessian --dense` (start-up, data, assembly and the file write
#       included) against JAX's jit(hessian) (compiled, repeats timed);
#   (b) per-sample GN norms, 784-64-64-10 over 10,000 mnist10k samples (samples/s);
#   (c) full-Hessian HVP at batch 1,000, our cached operator against the faster of
#       JAX's jvp(grad) and linearize.
# Usage: benches/cpu_rounds.sh [ROUNDS] (default 3); BIN=path/to/landscape; OUT=dir;
# KERNELS="auto matrixmultiply gemm" runs ours once per GEMM kernel (LANDSCAPE_GEMM)
# in each round (default: auto); BINS="target/release/landscape target/avx2/release/landscape"
# runs each binary in turn (the second built with --no-default-features: AVX2 kernels
# only), labelled by the SIMD its kernels use.
# Needs JAX (pip install "jax[cpu]"). Prints one markdown row per round and writes
# every raw JSON under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${BIN:-target/release/landscape}
BINS=${BINS:-$BIN}
OUT=${OUT:-target/cpu-rounds}
mkdir -p "$OUT"
export JAX_PLATFORMS=cpu
"$BIN" train --data digits --hidden 32,32 --epochs 1 --seed 0 --out "$OUT/digits.safetensors" >/dev/null
lscpu | grep -E "Model name|^Flags" | sed 's/^Flags:.*\(avx512f\).*/ISA: has avx512f/; s/^Flags:.*/ISA: no avx512f/'
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD)"
echo
KERNELS=${KERNELS:-auto}
echo "| round | SIMD, GEMM | (a) dense CLI wall (median of 3) | JAX jit(hessian) | ratio | (b) GN norms ours | JAX | ratio | (c) HVP b1000 ours (cached) | JAX jvp(grad) / linearize | ratio vs faster |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  python3 benches/peers/jax_hessian.py dense --repeats 3 --json "$OUT/jax_dense$r.json" >/dev/null
  python3 benches/peers/jax_hessian.py gnnorm --gn-samples 1000 --json "$OUT/jax_gn$r.json" >/dev/null
  python3 benches/peers/jax_hessian.py hvp --repeats 100 --json "$OUT/jax_hvp$r.json" >/dev/null
  for BIN in $BINS; do
  simd=$(LANDSCAPE_GEMM=auto "$BIN" hessian --model "$OUT/digits.safetensors" --data digits --json "$OUT/simd.json" >/dev/null 2>&1; python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['provenance'].get('simd'))" "$OUT/simd.json")
  for kernel in $KERNELS; do
  walls=""
  for _ in 1 2 3; do
    t0=$(date +%s.%N)
    LANDSCAPE_GEMM=$kernel "$BIN" hessian --model "$OUT/digits.safetensors" --data digits \
      --dense "$OUT/h.safetensors" --json "$OUT/h$r-$simd-$kernel.json" >/dev/null
    walls="$walls $(echo "$(date +%s.%N) - $t0" | bc)"
  done
  LANDSCAPE_GEMM=$kernel "$BIN" bench --devices cpu --workloads gn-norms,hvp-b1000 --reps 40 \
    --json "$OUT/ours$r-$simd-$kernel.json" >/dev/null
  python3 - "$OUT" "$r" "$walls" "$simd, $kernel" "$simd-$kernel" <<'PY'
import json, sys
out, r, walls, kernel, tag = sys.argv[1], sys.argv[2], sorted(map(float, sys.argv[3].split())), sys.argv[4], sys.argv[5]
def load(name):
    return json.load(open(f"{out}/{name}{r}.json"))
dense = walls[len(walls) // 2]  # median of the CLI runs
jd = load("jax_dense")["dense"]["median_s"]
ours = json.load(open(f"{out}/ours{r}-{tag}.json"))
ours = ours.get("results", ours)
rows = {row["workload"]: row for row in ours["rows"] if row["device"].startswith("cpu")}
gn = rows["gn_norms"]["seconds_median"]
hvp = rows["hvp_b1000"]["seconds_median"]
jg = load("jax_gn")["gnnorm"]["samples_per_s"]
jh = load("jax_hvp")["hvp"]
jvp, lin = jh["median_ms"] / 1e3, jh["linearized_median_ms"] / 1e3
ours_sps = 10000 / gn
print(f"| {r} | {kernel} | {dense:.3f} s | {jd:.2f} s | {jd/dense:.1f}x | {gn*1e3:.1f} ms ({ours_sps:,.0f} samples/s) | {jg:.1f}/s | {ours_sps/jg:,.0f}x | {hvp*1e3:.2f} ms | {jvp*1e3:.2f} / {lin*1e3:.2f} ms | {min(jvp, lin)/hvp:.2f}x |", flush=True)
PY
  done
done
done
