#!/usr/bin/env bash
# MPI scaling benchmark (issue 18): a 51 x 51 loss surface and a bounds sweep at 1, 2
# and 4 ranks, one thread per rank, with wall times, speed-ups and the bytes each rank
# sent and received in the work queue (LANDSCAPE_MPI_STATS), as a markdown table.
#
# Builds nothing. Usage:
#   benches/mpi_scaling.sh PATH/TO/MPI/landscape [WORK_DIR]
# e.g. after `CARGO_TARGET_DIR=target/mpi cargo build --release --features mpi`:
#   benches/mpi_scaling.sh target/mpi/release/landscape
#
# Environment: RANKS (default "1 2 4"), MPIRUN (default "mpirun --allow-run-as-root
# --oversubscribe"), SURFACE_SAMPLES (default 6000), SWEEP_SAMPLES (default 2000),
# SWEEP_FULL (default 120: the samples of the exact per-sample bounds, the sweep's cost).
# The job sizes are chosen so that one rank takes about 60-120 s per job on one core of
# the 2-core dev machine (calibrated from CPU times: about 35 ms per surface point, so
# about 1.8 s per grid row; 2-12 s per sweep configuration), so that MPI start-up
# (under a second) is small beside the work.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 PATH/TO/MPI/landscape [WORK_DIR]" >&2
  exit 2
fi
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
WORK="${2:-$(mktemp -d -t landscape-mpi-bench.XXXXXX)}"
mkdir -p "$WORK"
cd "$WORK"
RANKS="${RANKS:-1 2 4}"
read -r -a MPIRUN <<< "${MPIRUN:-mpirun --allow-run-as-root --oversubscribe}"
SURFACE_SAMPLES="${SURFACE_SAMPLES:-6000}"
SWEEP_SAMPLES="${SWEEP_SAMPLES:-2000}"
SWEEP_FULL="${SWEEP_FULL:-120}"
export RAYON_NUM_THREADS=1

# The surface's model: a 784-256-256-10 MLP on mnist10k, one epoch (not timed).
if [ ! -f model.safetensors ]; then
  "$BIN" train --data mnist10k --hidden 256,256 --epochs 1 --seed 1 --threads 1 \
    --out model.safetensors >/dev/null 2>train.log
fi

surface=(surface --model ../model.safetensors --data mnist10k --samples "$SURFACE_SAMPLES"
  "--grid=-1:1:51x-1:1:51" --threads 1 --out surface.safetensors --json surface.json)
sweep=(bounds-sweep --data mnist10k --widths 32,48,64 --depths 1,2,3 --epochs 1
  --samples "$SWEEP_SAMPLES" --full-samples "$SWEEP_FULL" --threads 1 --csv sweep.csv --json sweep.json)

machine="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//') ($(nproc) cores)"
echo "# MPI scaling: $(date -u '+%Y-%m-%d %H:%M UTC'), $machine" >&2
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

declare -A WALL BYTES
for job in surface sweep; do
  for np in $RANKS; do
    dir="$job-np$np"
    rm -rf "$dir" && mkdir -p "$dir"
    if [ "$job" = surface ]; then args=("${surface[@]}"); else args=("${sweep[@]}"); fi
    t0=$(date +%s.%N)
    (cd "$dir" && LANDSCAPE_MPI_STATS=1 "${MPIRUN[@]}" -np "$np" "$BIN" "${args[@]}" \
      >stdout.log 2>stderr.log) || { echo "$job at $np ranks failed:" >&2; tail -5 "$dir/stderr.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    WALL[$job,$np]=$(echo "$t1 - $t0" | bc -l)
    # "landscape-mpi: rank R of N: sent S bytes, received B bytes", one line per rank.
    # (ranks write to one file: match the records, not lines)
    BYTES[$job,$np]=$(grep -oh 'landscape-mpi: rank [0-9]* of [0-9]*: sent [0-9]* bytes, received [0-9]* bytes' "$dir/stderr.log" |
      sort -t' ' -k3,3n |
      awk '{r=$3; s=$7; v=$10; printf "%sr%s %.1f/%.1f", (NR>1?", ":""), r, s/1024, v/1024}')
    printf '# %s, %s ranks: %.1f s\n' "$job" "$np" "${WALL[$job,$np]}" >&2
  done
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# A digest of a job's results: the JSON without provenance and times, and for the
# surface the safetensors tensors (header without metadata, and data).
digest() {
  python3 - "$@" <<'PY'
import hashlib, json, struct, sys
h = hashlib.sha256()
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items()
                if k != "provenance" and not (k.endswith("seconds") or k.endswith("_s"))}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
for path in sys.argv[1:]:
    if path.endswith(".json"):
        h.update(json.dumps(strip(json.load(open(path))), sort_keys=True).encode())
    elif path.endswith(".safetensors"):
        b = open(path, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        head = json.loads(b[8:8 + n]); head.pop("__metadata__", None)
        h.update(json.dumps(head, sort_keys=True).encode()); h.update(b[8 + n:])
    else:
        h.update(open(path, "rb").read())
print(h.hexdigest())
PY
}
outputs() {
  if [ "$1" = surface ]; then echo "$2/surface.json $2/surface.safetensors"; else echo "$2/sweep.json $2/sweep.csv"; fi
}

first=${RANKS%% *}
echo
echo "| job | ranks | wall (s) | speed-up vs ${first} rank | KiB sent / received per rank (rank: sent/received) | results identical to ${first} rank |"
echo "|---|---|---|---|---|---|"
for job in surface sweep; do
  # shellcheck disable=SC2046
  ref=$(digest $(outputs "$job" "$job-np$first"))
  for np in $RANKS; do
    speed=$(echo "${WALL[$job,$first]} / ${WALL[$job,$np]}" | bc -l)
    # shellcheck disable=SC2046
    h=$(digest $(outputs "$job" "$job-np$np"))
    ident=$([ "$h" = "$ref" ] && echo yes || echo NO)
    printf '| %s | %s | %.1f | %.2f | %s | %s |\n' "$job" "$np" "${WALL[$job,$np]}" "$speed" "${BYTES[$job,$np]:-n/a}" "$ident"
  done
done
echo
echo "surface: \`${surface[*]}\`"
echo
echo "sweep: \`${sweep[*]}\`"
echo
echo "machine: $machine; work folder $WORK"
