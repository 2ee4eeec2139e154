#!/bin/sh
# Training methods compared (docs/experiments/margins.md, section "Training methods compared").
# Scale-invariant ConvNet (preset convnet, width 4: BN affine=False, bias-free convs),
# mnist10k, the first 2,000 training images, the 2,000 test images, batch 64, 10 epochs,
# seed 0, one thread. Run from the repository root after `cargo build --release`.
set -e
L=${L:-target/release/landscape}
D=docs/experiments/margins/compare
export RAYON_NUM_THREADS=1
COMMON="--arch convnet --width 4 --data mnist10k --train-size 2000 --epochs 10 --batch-size 64 --seed 0 --threads 1"
EUC="$COMMON --optimizer sgd --lr 0.05 --momentum 0.9 --dtype f32"
mkdir -p $D/models $D/runs $D/curvature
$L train $EUC --out $D/models/sgd.safetensors --json $D/runs/sgd.json
$L train $EUC --sam 0.05 --out $D/models/sam.safetensors --json $D/runs/sam.json
$L train $EUC --asam 0.5 --out $D/models/asam.safetensors --json $D/runs/asam.json
$L train $EUC --grad-norm-penalty 0.1 --out $D/models/gnp.safetensors --json $D/runs/gnp.json
$L train $EUC --trace-penalty 0.001 --trace-probes 1 --out $D/models/trace.safetensors --json $D/runs/trace.json
# On the sphere: the SI form (last layer frozen at Frobenius norm 10), projected SGD with
# lr = elr rho^2, without and with SAM on the sphere (same rho as Euclidean SAM).
SPH="$COMMON --elr 3e-4 --dtype f32 --curvature-every 0 --no-figs"
$L sphere train $SPH --out $D/runs/sphere-sgd --json $D/runs/sphere-sgd.json
$L sphere train $SPH --sam 0.05 --out $D/runs/sphere-sam --json $D/runs/sphere-sam.json
cp $D/runs/sphere-sgd/checkpoint.safetensors $D/models/sphere-sgd.safetensors
cp $D/runs/sphere-sam/checkpoint.safetensors $D/models/sphere-sam.safetensors
# Curvature at the end, the same measurement for every model (f64, train-mode BN over fixed
# batches of 64 of the first 1,000 training images): lambda_max with its residual (Lanczos,
# at most 30 iterations), the Hutchinson trace with its 95% interval (12 probes), GM = mean
# batch-gradient norm over the 15 full batches. Two models at a time.
for m in sgd sam asam gnp trace sphere-sgd sphere-sam; do echo $m; done | xargs -P 2 -I{} \
  $L hessian --model $D/models/{}.safetensors --data mnist10k --train-size 1000 \
    --bn-mode train --bn-batch-size 64 --top 1 --max-iter 30 --trace --probes 12 \
    --grad-norms 64 --seed 0 --threads 1 --json $D/curvature/{}.json
$L compare-methods --table $D/table.md --fig $D/compare --json $D/compare.json \
  --run "SGD=$D/runs/sgd.json,$D/curvature/sgd.json" \
  --run "SAM rho 0.05=$D/runs/sam.json,$D/curvature/sam.json" \
  --run "ASAM rho 0.5=$D/runs/asam.json,$D/curvature/asam.json" \
  --run "grad-norm penalty 0.1=$D/runs/gnp.json,$D/curvature/gnp.json" \
  --run "trace penalty 1e-3=$D/runs/trace.json,$D/curvature/trace.json" \
  --run "sphere SGD=$D/runs/sphere-sgd/run.json,$D/curvature/sphere-sgd.json" \
  --run "sphere SAM rho 0.05=$D/runs/sphere-sam/run.json,$D/curvature/sphere-sam.json"
