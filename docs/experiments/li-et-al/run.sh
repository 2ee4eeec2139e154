#!/usr/bin/env bash
# Li et al. (2018) at the scale of one core of a shared 2-core CPU: one command per figure.
# Scale knobs (defaults = the runs reported in docs/experiments/li-et-al.md):
#   L           the landscape binary                        (default: landscape)
#   OUT         output folder                               (default: docs/experiments/li-et-al/results)
#   PART        batch | resnet | all                        (default: all)
#   STAGE       train | landscape | all (train only, or the figures of trained models) (default: all)
#   T           worker threads of every command             (default: 1)
#   DS          --downsample factor (2: 28x28 -> 14x14)     (default: 2)
#   NTRAIN      training images (first n of mnist10k)       (default: 8000 = all)
#   NTEST       test images                                 (default: 2000 = all)
#   SMALL       the small batch                             (default: 128)
#   BIG         the large batch (32 x SMALL)                (default: 4096)
#   EPOCHS      epochs of both batches (as Li et al.)       (default: 30)
#   LINE_N      points of each 1-D plot                     (default: 21)
#   LSAMPLES    training samples of the 1-D plots           (default: 2000)
#   LTEST       test samples of the 1-D plots and surfaces  (default: 1000)
#   RTRAIN      training images of the ResNets              (default: 8000)
#   REPOCHS     ResNet epochs                               (default: 10)
#   RWIDTH      ResNet base width c (stages c,2c,4c)        (default: 4; Li et al.: 16)
#   GRID        surface grid points per axis over [-1,1]^2  (default: 15)
#   SSAMPLES    training samples of the surfaces            (default: 256)
#   CGRID       curvature-map points per axis (1 = model)   (default: 3)
#   CSAMPLES    training samples of the curvature maps      (default: 64)
#   DEPTHS      ResNet depths                               (default: "20 56")
#   WIDE        --wide of the wide ResNet-20                (default: 2)
#   NETS        override: "arch:K ..." (K = --wide)         (default: from DEPTHS and WIDE)
#   XIGNORE     --xignore of the random directions          (default: biasbn, Li et al.'s default)
# A trained model that exists (its .safetensors and train JSON) is not trained again, so
# STAGE=landscape redraws every figure from the committed models' JSON-described runs.
# Every command's wall time is appended to $OUT/times.txt.
set -euo pipefail
L=${L:-landscape}
OUT=${OUT:-docs/experiments/li-et-al/results}
PART=${PART:-all} STAGE=${STAGE:-all} T=${T:-1} DS=${DS:-2}
NTRAIN=${NTRAIN:-8000} NTEST=${NTEST:-2000} SMALL=${SMALL:-128} BIG=${BIG:-4096} EPOCHS=${EPOCHS:-30}
LINE_N=${LINE_N:-21} LSAMPLES=${LSAMPLES:-2000} LTEST=${LTEST:-1000}
RTRAIN=${RTRAIN:-8000} REPOCHS=${REPOCHS:-10} RWIDTH=${RWIDTH:-4}
GRID=${GRID:-15} SSAMPLES=${SSAMPLES:-256} CGRID=${CGRID:-3} CSAMPLES=${CSAMPLES:-64}
DEPTHS=${DEPTHS:-"20 56"} WIDE=${WIDE:-2} XIGNORE=${XIGNORE:-biasbn}
mkdir -p "$OUT"
TR="--data mnist10k --downsample $DS --train-size $NTRAIN --test-size $NTEST"
LS="--data mnist10k --downsample $DS --train-size $NTRAIN --test-size $LTEST"
t() { local s=$(date +%s.%N); "$@"; echo "$(date +%s.%N) $s $*" | awk '{printf "%.1f s  ", $1-$2; for(i=3;i<=NF;i++) printf "%s ", $i; print ""}' >> "$OUT/times.txt"; }
train() { # train MODEL JSON ARGS...: trains unless both files exist (resumable through its checkpoint folder)
  local m=$1 j=$2; shift 2
  if [[ $STAGE == landscape ]] || [[ -f $m && -f $j ]]; then return 0; fi
  local ck="$OUT/ckpt_$(basename "$m" .safetensors)_train" res=(--checkpoint-dir)
  [[ -f $ck/resume.ckpt ]] && res=(--resume)
  t $L --threads "$T" train "$@" "${res[@]}" "$ck" --out "$m" --json "$j"
  rm -rf "$ck"
}
fig() { [[ $STAGE != train ]]; }

if [[ $PART == batch || $PART == all ]]; then
  # Batch size and weight decay: ConvNet c = 8 (BatchNorm), Adam lr 3e-3, the same epochs for both batches.
  for wd in 0 5e-4; do
    for bs in "$SMALL" "$BIG"; do
      train "$OUT/conv_bs${bs}_wd${wd}.safetensors" "$OUT/train_bs${bs}_wd${wd}.json" --arch convnet --width 8 $TR \
        --epochs "$EPOCHS" --batch-size "$bs" --lr 3e-3 --weight-decay "$wd" --seed 1
    done
    fig || continue
    # 1-D interpolation from the small-batch (alpha = 0) to the large-batch (alpha = 1) solution.
    t $L --threads "$T" line --model "$OUT/conv_bs${SMALL}_wd${wd}.safetensors" --to "$OUT/conv_bs${BIG}_wd${wd}.safetensors" $LS \
      --samples "$LSAMPLES" --range=-0.5:1.5:"$LINE_N" --fig "$OUT/interp_wd${wd}" --json "$OUT/interp_wd${wd}.json"
    for bs in "$SMALL" "$BIG"; do
      # Filter-normalised random direction (biases and BN zero with XIGNORE=biasbn, Li et al.'s default).
      t $L --threads "$T" line --model "$OUT/conv_bs${bs}_wd${wd}.safetensors" $LS --samples "$LSAMPLES" --direction random \
        --norm filter --xignore "$XIGNORE" --range=-1:1:"$LINE_N" --fig "$OUT/filter_bs${bs}_wd${wd}" --json "$OUT/filter_bs${bs}_wd${wd}.json"
      # Unnormalised random direction (Gaussian entries), a short range.
      t $L --threads "$T" line --model "$OUT/conv_bs${bs}_wd${wd}.safetensors" $LS --samples "$LSAMPLES" --direction random \
        --norm none --xignore "$XIGNORE" --range=-0.05:0.05:"$LINE_N" --fig "$OUT/raw_bs${bs}_wd${wd}" --json "$OUT/raw_bs${bs}_wd${wd}.json"
    done
  done
fi

if [[ $PART == resnet || $PART == all ]]; then
  # Skip connections, depth and width: ResNets at base width RWIDTH, Adam lr 3e-3, batch 128.
  if [[ $CGRID == 1 ]]; then CG=0:0:1x0:0:1; else CG=-1:1:${CGRID}x-1:1:${CGRID}; fi
  RT="--data mnist10k --downsample $DS --train-size $RTRAIN --test-size $NTEST"
  RS="--data mnist10k --downsample $DS --train-size $RTRAIN --test-size $LTEST"
  nets=()
  for d in $DEPTHS; do nets+=("resnet$d:1" "resnet$d-noshort:1"); done
  nets+=("resnet20:$WIDE")
  if [[ -n ${NETS:-} ]]; then read -ra nets <<< "$NETS"; fi
  for spec in "${nets[@]}"; do
    arch=${spec%%:*} k=${spec##*:}
    name="${arch}_w${k}"
    train "$OUT/$name.safetensors" "$OUT/train_$name.json" --arch "$arch" --width "$RWIDTH" --wide "$k" $RT \
      --epochs "$REPOCHS" --batch-size 128 --lr 3e-3 --seed 1
    fig || continue
    # Filter-normalised plane with log-spaced contours, and the exact curvature maps on a coarser grid.
    ck="$OUT/ckpt_$name" res=(--checkpoint-dir)
    [[ -f $ck/resume.ckpt ]] && res=(--resume)
    t $L --threads "$T" surface --model "$OUT/$name.safetensors" $RS --samples "$SSAMPLES" \
      --grid=-1:1:${GRID}x-1:1:${GRID} --xignore "$XIGNORE" --contour-levels log --curvature-grid=$CG \
      --curvature-samples "$CSAMPLES" "${res[@]}" "$ck" \
      --out "$OUT/surface_$name.safetensors" --fig "$OUT/surface_$name" --json "$OUT/surface_$name.json"
    rm -rf "$ck"
  done
fi
