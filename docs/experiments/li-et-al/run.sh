#!/usr/bin/env bash
# Li et al. (2018) at the scale of a shared 2-core CPU: one command per figure.
# Scale knobs (defaults = the runs reported in docs/experiments/li-et-al.md):
#   L           the landscape binary                  (default: landscape)
#   OUT         output folder                         (default: docs/experiments/li-et-al/results)
#   PART        batch | resnet | all                  (default: all)
#   NTRAIN      training subset (first n of mnist10k) (default: 1024)
#   NTEST       test subset                           (default: 1000)
#   SMALL       the small batch                       (default: 32)
#   BIG         the large batch (32 x SMALL)          (default: 1024 = full batch)
#   EPOCHS      epochs of the batch experiment        (default: 5)
#   LINE_N      points of each 1-D plot               (default: 13)
#   LSAMPLES    training samples of the 1-D plots     (default: 512)
#   RTRAIN      training subset of the ResNets        (default: 1000)
#   REPOCHS     ResNet epochs                         (default: 8)
#   RWIDTH      ResNet base width c (stages c,2c,4c)  (default: 4; Li et al.: 16)
#   GRID        surface grid points per axis          (default: 5)
#   SSAMPLES    training samples of the surfaces      (default: 32)
#   CGRID       curvature-map points per axis         (default: 1 = the model only)
#   CSAMPLES    training samples of the curvature     (default: 16)
#   DEPTHS      ResNet depths                         (default: "20")
#   NETS        override: "arch:K ..." (K = --wide)   (default: from DEPTHS, plus resnet20:2)
set -euo pipefail
L=${L:-landscape}
OUT=${OUT:-docs/experiments/li-et-al/results}
PART=${PART:-all}
NTRAIN=${NTRAIN:-1024} NTEST=${NTEST:-1000} SMALL=${SMALL:-32} BIG=${BIG:-1024} EPOCHS=${EPOCHS:-5}
LINE_N=${LINE_N:-13} LSAMPLES=${LSAMPLES:-512}
RTRAIN=${RTRAIN:-1000} REPOCHS=${REPOCHS:-8} RWIDTH=${RWIDTH:-4}
GRID=${GRID:-5} SSAMPLES=${SSAMPLES:-32} CGRID=${CGRID:-1} CSAMPLES=${CSAMPLES:-16}
DEPTHS=${DEPTHS:-"20"}
mkdir -p "$OUT"
D="--data mnist10k --train-size $NTRAIN --test-size $NTEST"
t() { local s=$(date +%s.%N); "$@"; echo "$(date +%s.%N) $s $*" | awk '{printf "%.1f s  ", $1-$2; for(i=3;i<=NF;i++) printf "%s ", $i; print ""}' >> "$OUT/times.txt"; }

if [[ $PART == batch || $PART == all ]]; then
  # Batch size and weight decay: ConvNet c = 8, Adam lr 3e-3, same epochs for both batches.
  for wd in 0 5e-4; do
    for bs in "$SMALL" "$BIG"; do
      t $L train --arch convnet --width 8 $D --epochs "$EPOCHS" --batch-size "$bs" --lr 3e-3 \
        --weight-decay "$wd" --seed 1 --out "$OUT/conv_bs${bs}_wd${wd}.safetensors" --json "$OUT/train_bs${bs}_wd${wd}.json"
    done
    # 1-D interpolation from the small-batch (alpha = 0) to the large-batch (alpha = 1) solution.
    t $L line --model "$OUT/conv_bs${SMALL}_wd${wd}.safetensors" --to "$OUT/conv_bs${BIG}_wd${wd}.safetensors" $D \
      --samples "$LSAMPLES" --range=-0.5:1.5:"$LINE_N" --fig "$OUT/interp_wd${wd}" --json "$OUT/interp_wd${wd}.json"
    for bs in "$SMALL" "$BIG"; do
      # Filter-normalised random direction (biases and BN zero, as Li et al.'s default).
      t $L line --model "$OUT/conv_bs${bs}_wd${wd}.safetensors" $D --samples "$LSAMPLES" --direction random \
        --norm filter --range=-1:1:"$LINE_N" --fig "$OUT/filter_bs${bs}_wd${wd}" --json "$OUT/filter_bs${bs}_wd${wd}.json"
      # Unnormalised random direction (Gaussian entries), a short range.
      t $L line --model "$OUT/conv_bs${bs}_wd${wd}.safetensors" $D --samples "$LSAMPLES" --direction random \
        --norm none --range=-0.05:0.05:"$LINE_N" --fig "$OUT/raw_bs${bs}_wd${wd}" --json "$OUT/raw_bs${bs}_wd${wd}.json"
    done
  done
fi

if [[ $PART == resnet || $PART == all ]]; then
  # Skip connections, depth and width: ResNets at base width RWIDTH, Adam lr 3e-3, batch 128.
  if [[ $CGRID == 1 ]]; then CG=0:0:1x0:0:1; else CG=-1:1:${CGRID}x-1:1:${CGRID}; fi
  R="--data mnist10k --train-size $RTRAIN --test-size $NTEST"
  nets=()
  for d in $DEPTHS; do nets+=("resnet$d:1" "resnet$d-noshort:1"); done
  nets+=("resnet20:2")
  if [[ -n ${NETS:-} ]]; then read -ra nets <<< "$NETS"; fi
  for spec in "${nets[@]}"; do
    arch=${spec%%:*} k=${spec##*:}
    name="${arch}_w${k}"
    t $L train --arch "$arch" --width "$RWIDTH" --wide "$k" $R --epochs "$REPOCHS" --batch-size 128 --lr 3e-3 \
      --seed 1 --out "$OUT/$name.safetensors" --json "$OUT/train_$name.json"
    # Filter-normalised plane (biases and BN zero) with the exact curvature maps on a coarser grid.
    t $L surface --model "$OUT/$name.safetensors" $R --samples "$SSAMPLES" \
      --grid=-1:1:${GRID}x-1:1:${GRID} --curvature-grid=$CG \
      --curvature-samples "$CSAMPLES" --checkpoint-dir "$OUT/ckpt_$name" \
      --out "$OUT/surface_$name.safetensors" --fig "$OUT/surface_$name" --json "$OUT/surface_$name.json"
  done
fi
