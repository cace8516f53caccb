#!/usr/bin/env bash
# The first-GPU check, in one call of at most 8 minutes (how to read it: docs/BENCHMARKS.md):
#   cuda_tests  the tests marked `cuda` (pytest -m cuda)
#   trainers    each trainer: one training step and one evaluation at ViT-B/16 size on random
#               weights at 224 px, PREC fp16 and amp (bf16), time per image and peak memory
#   benchmark   tools/benchmark.py --quick --json on the GPU
#   ddp         torchrun with every GPU present: an nccl group and the engine's collectives
# Writes OUT/gpu_check.json (everything) and OUT/gpu_check.md (a short table), also printed.
# Each part runs under its own timeout; a part that fails or times out is recorded and the next
# one runs. Exit status 0 only when every part passed (or was skipped for want of a GPU).
#
# usage: bash tools/gpu_check.sh [OUT]            (OUT defaults to ./gpu_check_out)
# env:   PYTHON (default .venv/bin/python, else python3), GPU_CHECK_PARTS (names above),
#        GPU_CHECK_DEVICE (auto | cuda | cpu: cpu runs the GPU parts on the CPU, as the test does),
#        GPU_CHECK_SIZE (vit_b16 | tiny), GPU_CHECK_PRECS, GPU_CHECK_TRAINERS, GPU_CHECK_NPROC,
#        GPU_CHECK_TIMEOUT_<PART> in seconds (defaults below: 90 + 180 + 100 + 60, and 40 for an install),
#        GPU_CHECK_INSTALL (1: pip install -e . when promptdiff is missing; default 1 with a GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PARTS=${GPU_CHECK_PARTS:-cuda_tests trainers benchmark ddp}
SIZE=${GPU_CHECK_SIZE:-vit_b16}
PRECS=${GPU_CHECK_PRECS:-fp16 amp}
TRAINERS=${GPU_CHECK_TRAINERS:-}
declare -A LIMIT=([cuda_tests]=90 [trainers]=180 [benchmark]=100 [ddp]=60)

mkdir -p "$OUT"
rm -f "$OUT"/*.status.json "$OUT"/*.log "$OUT"/*.json "$OUT"/gpu_check.md

status() {  # NAME STATUS RC SECONDS
    printf '{"status": "%s", "rc": %s, "seconds": %s}\n' "$2" "$3" "$4" >"$OUT/$1.status.json"
    echo "gpu_check: $1 $2 (rc $3, $4 s)"
}

run_part() {  # NAME COMMAND...: under GPU_CHECK_TIMEOUT_NAME seconds, output in OUT/NAME.log
    local name=$1 var="GPU_CHECK_TIMEOUT_${1^^}" rc state start
    shift
    local limit=${!var:-${LIMIT[$name]}}
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) state=passed ;;
        124 | 137) state=timeout ;;
        *) state=failed ;;
    esac
    status "$name" "$state" "$rc" "$(($(date +%s) - start))"
}

GPUS=$(timeout 60 "$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
# the tools import promptdiff.trainers/.tools, which only an install maps (setup.py): a GPU machine
# with the repository copied onto it gets the editable install first (no downloads); elsewhere
# only with GPU_CHECK_INSTALL=1, so that a development environment is never changed unasked
if ! "$PY" -c 'import promptdiff.tools, promptdiff.trainers' 2>/dev/null; then
    if [ "${GPU_CHECK_INSTALL:-$([ "${GPUS:-0}" -gt 0 ] && echo 1 || echo 0)}" = 1 ]; then
        LIMIT[install]=40
        run_part install "$PY" -m pip install -q --no-deps --no-build-isolation -e .
    else
        echo "gpu_check: promptdiff is not installed here; run bash tools/setup_env.sh" >&2
    fi
fi
DEVICE=${GPU_CHECK_DEVICE:-auto}
if [ "$DEVICE" = auto ]; then
    if [ "${GPUS:-0}" -gt 0 ]; then DEVICE=cuda; else DEVICE=none; fi
fi
if [ "$DEVICE" = cuda ]; then NPROC=${GPU_CHECK_NPROC:-$GPUS}; else NPROC=${GPU_CHECK_NPROC:-2}; fi
echo "gpu_check: $GPUS GPU(s), device $DEVICE, python $PY, output $OUT"

for part in $PARTS; do
    if [ "$DEVICE" = none ] && [ "$part" != cuda_tests ]; then
        status "$part" skipped 0 0
        continue
    fi
    case $part in
        cuda_tests) run_part cuda_tests "$PY" -m pytest -q -p no:cacheprovider -m cuda tests ;;
        trainers)
            # shellcheck disable=SC2086  # word lists
            run_part trainers "$PY" -m promptdiff.tools.gpu_check trainers --out "$OUT/trainers.json" \
                --device "$DEVICE" --size "$SIZE" --precs $PRECS ${TRAINERS:+--trainers $TRAINERS}
            ;;
        benchmark)
            run_part benchmark "$PY" tools/benchmark.py --quick --quiet --device "$DEVICE" \
                --json "$OUT/benchmark.json"
            ;;
        ddp)
            run_part ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
                -m promptdiff.tools.gpu_check ddp --out "$OUT/ddp.json" --device "$DEVICE"
            ;;
        *) echo "gpu_check: unknown part $part (use: cuda_tests trainers benchmark ddp)" >&2 ;;
    esac
done
"$PY" -m promptdiff.tools.gpu_check summary "$OUT"
