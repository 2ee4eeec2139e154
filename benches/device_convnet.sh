#!/usr/bin/env bash
# Network-engine CPU benchmarks on a quiet host (the lent device machine's CPU, two cores
# pinned with taskset), ours and PyTorch/PyHessian interleaved in one run. The
# `landscape` binary is built on the dev machine and carried in .gpu/ (no Rust there).
# Usage, from the repo root: benches/device_convnet.sh OUTDIR [rounds]
set -uo pipefail
out=$1
rounds=${2:-2}
mkdir -p "$out"
# BIN and PIN override the binary and the pinning (for a run on the dev machine:
# BIN=target/release/landscape PIN= benches/device_convnet.sh OUT 2).
bin=${BIN:-.gpu/landscape}
pin=${PIN-taskset -c 0,1}
lscpu > "$out/lscpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" > "$out/versions.txt" 2>&1
python3 -c "import pyhessian; print('pyhessian ok')" >> "$out/versions.txt" 2>&1
ref=2.478894018477685 # eigsh reference (docs/benchmarks.md)
for r in $(seq 1 "$rounds"); do
    work=convnet-step,convnet-hvp-n1000
    only=step,hvp
    extra=
    if [ "$r" = 1 ]; then
        work=$work,convnet-top-eig-n2000,convnet-top-eig-mixed-n2000
        only=$only,eig
        extra="--pyhessian-dtypes f64,f32"
    fi
    echo "round $r: ours ($work)"
    $pin $bin bench --devices cpu --threads 2 --reps 5 --workloads "$work" \
        --json "$out/ours_$r.json" --table "$out/ours_$r.md" 2>&1 | grep convnet
    echo "round $r: PyTorch ($only)"
    $pin python3 benches/peers/torch_convnet.py --threads 2 --hvp-reps 3 --only "$only" $extra \
        --ref-value $ref --json "$out/torch_$r.json" 2>&1 | grep -v Warning | tail -8
done
