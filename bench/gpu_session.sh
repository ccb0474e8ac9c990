#!/usr/bin/env bash
# One GPU session's checks, in order of importance, each bounded so one stall cannot eat
# the rest (run from the repository root on a CUDA machine; results under $OUT, or ./gpu-out):
#   1. the paper preset (180 x 512 x 512, 61 tilts, SNR 0.1, isolated) simulated here;
#   2. `taichi-etgs reconstruct` on it end to end from a cold start (fresh Taichi cache),
#      timed from the shell: the issue 8 figure (<= 60 s on one H100/H200);
#   3. bench/run.py --preset $PRESET --arch $ARCH: every method scored against the truth;
#   4. the CUDA variants of the kernel tests (skipped on CPU-only machines);
#   5. `taichi-etgs batch --arch $ARCH` on two small series (a worker pinned to the GPU).
# Atomic models are read from .gpu/structures (copied there from ../shared, which does not
# travel). Wheels for what the machine lacks are installed from .whl when present.
#
# Preparing a session (here, before the first device call; both folders git-ignored via
# .git/info/exclude, and carried: run(carry=[".whl", ".gpu"])):
#   mkdir -p .gpu/structures && cp ../shared/data/structures/{4v1w,6qt9,3jb9}.cif.gz .gpu/structures/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform \
#       manylinux2014_x86_64 -d .whl taichi==1.7.4 dill mrcfile gemmi dask distributed \
#       partd locket zict tblib tornado      (the versions installed here)
# then drop taichi/_lib/c_api/, taichi/examples/ and taichi-*.data/ from the taichi wheel
# (and their RECORD lines): 56 MB -> 35 MB, so that the tree stays under the 64 MiB a
# call may carry. The smoke test without a GPU:
#   SKIP_WHEELS=1 METHODS=wbp ARCH=cpu PRESET=small THICKNESS=48 OUT=/tmp/gpuout bash bench/gpu_session.sh
# ARCH=cpu PRESET=small THICKNESS=48 runs the same steps as a smoke test without a GPU.
set -u
OUT=${OUT:-gpu-out} ARCH=${ARCH:-cuda} PRESET=${PRESET:-paper} THICKNESS=${THICKNESS:-180}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::SyntaxWarning
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || exit 1
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
ETGS="python3 -m taichi_etgs.cli"
step() { echo "=== $(date +%T) $*" | tee -a "$LOG"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } >>"$LOG" 2>&1

step simulate the $PRESET preset
timeout 240 python3 bench/run.py --preset $PRESET --arch $ARCH --structures .gpu/structures \
    --simulate-only >>"$LOG" 2>&1
DATA=bench/data/$PRESET

step "reconstruct, cold start (no Taichi cache)"
rm -rf ~/.cache/taichi
start=$(date +%s%N)
timeout 200 $ETGS reconstruct $DATA/tilts.mrc --thickness $THICKNESS -o /tmp/paper_gs.mrc --arch $ARCH \
    -v --force >>"$LOG" 2>&1
rc=$?
echo "reconstruct end to end, cold: $(( ($(date +%s%N) - start) / 1000000 )) ms (rc $rc)" | tee -a "$LOG"
step "reconstruct again (Taichi's kernel cache warm)"
start=$(date +%s%N)
timeout 150 $ETGS reconstruct $DATA/tilts.mrc --thickness $THICKNESS -o /tmp/paper_gs.mrc --arch $ARCH \
    --force >>"$LOG" 2>&1
rc=$?
echo "reconstruct end to end, warm cache: $(( ($(date +%s%N) - start) / 1000000 )) ms (rc $rc)" | tee -a "$LOG"
cp /tmp/paper_gs.mrc.json "$OUT/reconstruct-$PRESET-$ARCH.json" 2>/dev/null

step "the classical methods, and every result scored against the truth"
timeout 240 python3 bench/run.py --preset $PRESET --arch $ARCH --no-astra \
    --methods ${METHODS:-wbp,wbp_fakesirt20,sirt10,sirt20,sirt50} \
    --score gaussians=/tmp/paper_gs.mrc >>"$LOG" 2>&1
cp bench/results/$PRESET.json bench/results/$PRESET.md bench/results/$PRESET.png "$OUT/" 2>/dev/null

step CUDA kernel tests
timeout 120 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_projector.py \
    tests/test_adam.py tests/test_gaussian_kernels.py tests/test_loss.py >>"$LOG" 2>&1

step "batch on the GPU (two small series, one pinned worker)"
for s in 1 2; do
    $ETGS simulate -o /tmp/batch_in/ts$s --shape 32,96,96 --seed $s --force >>"$LOG" 2>&1
    mv /tmp/batch_in/ts$s/tilts.mrc /tmp/batch_in/ts$s.mrc
    mv /tmp/batch_in/ts$s/tilts.tlt /tmp/batch_in/ts$s.tlt
done
timeout 120 $ETGS batch /tmp/batch_in --method sirt --thickness 32 -o /tmp/batch_out \
    --arch $ARCH -v >>"$LOG" 2>&1
echo "batch rc $?" | tee -a "$LOG"
cp /tmp/batch_out/*.csv "$OUT/" 2>/dev/null
step done
