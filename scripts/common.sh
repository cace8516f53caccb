# Shared logic of the experiment scripts; sourced by scripts/<Trainer>/*.sh and scripts/run_*_all.sh.
#
# A per-trainer script sets TRAINER (the registered trainer name), CFG_DIR (its folder under
# configs/trainers/) and DEFAULT_CFG (a file name in that folder without .yaml), sources this file
# and calls one pd_* entry point with its arguments. Sourcing runs nothing but
# `set -euo pipefail`; every entry point validates its arguments first (usage, exit 2).
#
# Environment (see docs/SCRIPTS.md):
#   DATA        dataset root (default ./data; must exist)
#   OUTPUT      output root (default ./output)
#   CFG         trainer config name, overriding the script's default
#   SHOTS       shots per class for base2new and xd (default 16; few_shot.sh takes it as argument)
#   PYTHON      interpreter that runs train.py (default .venv/bin/python if present, else python)
#   EXTRA_OPTS  KEY VALUE options appended last to every train.py call; split like a shell command
#               line but never evaluated: quote values holding spaces, e.g.
#               EXTRA_OPTS='MODEL.BACKBONE.PATH "/my weights/tiny.pt" INPUT.SIZE "(32, 32)"'
#   XD_SOURCE   dataset the xd scripts train on and load from (default imagenet)
#   NGPU        processes (GPUs) per run (default 1); above 1 every run is launched as
#               `$PYTHON -m torch.distributed.run --standalone --nproc_per_node $NGPU train.py ...`
#               (torchrun), with the configs' batch sizes split over the GPUs
#   DRY_RUN     1: print the train.py command instead of running it (all checks still apply)
#   QUIET       1: pass --quiet to train.py (one summary line per run; log.txt stays complete)

set -euo pipefail

PD_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PD_SELF=${0}

pd_die() {
    echo "error: $*" >&2
    exit 1
}

pd_usage() {  # pd_usage NARGS_WANTED NARGS_GOT "ARGS" "what it does"
    if [[ $1 -ne $2 ]]; then
        echo "usage: bash $PD_SELF $3" >&2
        echo "$4 (got $2 arguments, expected $1; see docs/SCRIPTS.md)" >&2
        exit 2
    fi
}

pd_check_int() {  # pd_check_int NAME VALUE
    [[ $2 =~ ^[0-9]+$ ]] || pd_die "$1 must be a non-negative integer, got '$2'"
}

# The other script of this trainer, spelt the way this one was called (for messages).
pd_sibling() {
    echo "bash $(dirname "$PD_SELF")/$1"
}

pd_list_yaml() {  # pd_list_yaml DIR -> "a b c" (the *.yaml names in DIR, without .yaml)
    local f names=()
    for f in "$1"/*.yaml; do
        [[ -f $f ]] && names+=("$(basename "$f" .yaml)")
    done
    echo "${names[*]:-none}"
}

pd_check_dataset() {  # pd_check_dataset NAME: configs/datasets/NAME.yaml must exist
    if [[ ! $1 =~ ^[A-Za-z0-9_]+$ || ! -f $PD_REPO/configs/datasets/$1.yaml ]]; then
        pd_die "unknown dataset '$1': no $PD_REPO/configs/datasets/$1.yaml (available: $(pd_list_yaml "$PD_REPO/configs/datasets"))"
    fi
}

pd_default_python() {  # PYTHON, unless set: the project's own venv when it exists, else python
    if [[ -z ${PYTHON:-} ]]; then
        # the project's own venv (tools/setup_env.sh) when it exists, as the README sets it up
        if [[ -x $PD_REPO/.venv/bin/python ]]; then PYTHON=$PD_REPO/.venv/bin/python; else PYTHON=python; fi
    fi
}

# Everything the environment decides; sets PD_CFG, PD_CFG_FILE, PD_EXTRA and checks DATA/PYTHON.
pd_setup() {
    : "${TRAINER:?scripts/common.sh: the sourcing script must set TRAINER}"
    : "${CFG_DIR:?scripts/common.sh: the sourcing script must set CFG_DIR}"
    : "${DEFAULT_CFG:?scripts/common.sh: the sourcing script must set DEFAULT_CFG}"
    DATA=${DATA:-./data}
    OUTPUT=${OUTPUT:-./output}
    SHOTS=${SHOTS:-16}
    pd_default_python
    XD_SOURCE=${XD_SOURCE:-imagenet}
    NGPU=${NGPU:-1}
    pd_check_int SHOTS "$SHOTS"
    pd_check_int NGPU "$NGPU"
    (( NGPU >= 1 )) || pd_die "NGPU must be at least 1 (the number of GPUs per run), got '$NGPU'"
    [[ -d $DATA ]] || pd_die "dataset root DATA=$DATA does not exist; set DATA to the folder that holds the dataset folders (caltech-101/, imagenet/, ...)"
    if [[ ${DRY_RUN:-0} != 1 ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
        pd_die "PYTHON=$PYTHON is not an executable; set PYTHON, e.g. PYTHON=.venv/bin/python"
    fi

    PD_CFG=${CFG:-$DEFAULT_CFG}
    local cfg_dir="$PD_REPO/configs/trainers/$CFG_DIR"
    PD_CFG_FILE="$cfg_dir/$PD_CFG.yaml"
    if [[ ! $PD_CFG =~ ^[A-Za-z0-9_.+-]+$ || ! -f $PD_CFG_FILE ]]; then
        pd_die "no trainer config $PD_CFG_FILE (CFG=$PD_CFG; available: $(pd_list_yaml "$cfg_dir"))"
    fi

    # EXTRA_OPTS -> words, with shell-like quoting but no evaluation: xargs splits on blanks and
    # honours '...', "..." and backslashes, so "(32, 32)" or a path with spaces stays one word.
    PD_EXTRA=()
    if [[ -n ${EXTRA_OPTS:-} ]]; then
        local err word
        if ! err=$(printf '%s\n' "$EXTRA_OPTS" | xargs printf '' 2>&1); then
            pd_die "cannot split EXTRA_OPTS ($err); quote values with matching ' or \""
        fi
        while IFS= read -r -d '' word; do
            PD_EXTRA+=("$word")
        done < <(printf '%s\n' "$EXTRA_OPTS" | xargs printf '%s\0')
        if (( ${#PD_EXTRA[@]} % 2 )); then
            pd_die "EXTRA_OPTS must be KEY VALUE pairs, got ${#PD_EXTRA[@]} words: $(printf '[%s] ' "${PD_EXTRA[@]}")- quote values holding spaces"
        fi
    fi
}

pd_run_dir() {  # pd_run_dir PROTOCOL_PATH DATASET SHOTS SEED
    echo "$OUTPUT/$1/$2/shots_$3/$TRAINER/$PD_CFG/seed$4"
}

# The status of the run folder DIR, from the results library that owns the run-folder layout
# (promptdiff/results/layout.py): sets PD_EPOCH to the epoch of its last complete checkpoint
# ("best" for model-best.pth.tar, empty for none) and PD_FINISHED to 1 when training finished
# (results.json, or a log says so), else 0. A damaged run is one error line and exit 1.
pd_status() {  # pd_status DIR
    local line epoch finished
    line=$(pd_results status "$1") || exit 1
    read -r epoch finished <<<"$line"
    PD_EPOCH=$epoch
    [[ $epoch == none ]] && PD_EPOCH=""
    PD_FINISHED=0
    [[ $finished == finished ]] && PD_FINISHED=1
    return 0
}

# python -m promptdiff.results ARGS, with this checkout's library (the one train.py uses)
pd_results() {
    PYTHONPATH="$PD_REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m promptdiff.results "$@"
}

# Model flags for an evaluation of the run in TRAIN_DIR; TRAIN_CMD is what produces it.
pd_model_flags() {  # pd_model_flags TRAIN_DIR TRAIN_CMD -> sets PD_MODEL_FLAGS
    pd_status "$1"
    if [[ -z $PD_EPOCH ]]; then
        pd_die "no trained model in $1 (no checkpoint); run '$2' first"
    fi
    if [[ $PD_FINISHED != 1 ]]; then
        pd_die "training in $1 is unfinished (last checkpoint: epoch $PD_EPOCH); run '$2' again to resume it first"
    fi
    PD_MODEL_FLAGS=(--model-dir "$1")
    if [[ $PD_EPOCH != best ]]; then
        PD_MODEL_FLAGS+=(--load-epoch "$PD_EPOCH")
    fi
}

# pd_launch OUT_DIR DATASET SEED [FLAG ...] -- [KEY VALUE ...]: one train.py run, unless OUT_DIR
# already holds results.json. An unfinished run is started again in the same folder, where
# train.py resumes from its last checkpoint by itself.
pd_launch() {
    local out=$1 dataset=$2 seed=$3
    shift 3
    local flags=()
    while [[ $# -gt 0 && $1 != -- ]]; do
        flags+=("$1")
        shift
    done
    [[ $# -gt 0 ]] && shift
    if [[ ${QUIET:-0} == 1 ]]; then
        flags+=(--quiet)
    fi
    local launcher=("$PYTHON")
    if (( NGPU > 1 )); then
        launcher+=(-m torch.distributed.run --standalone --nproc_per_node "$NGPU")
    fi
    local args=(--root "$DATA" --seed "$seed" --trainer "$TRAINER"
        --dataset-config-file "$PD_REPO/configs/datasets/$dataset.yaml" --config-file "$PD_CFG_FILE"
        --output-dir "$out" ${flags[@]+"${flags[@]}"}
        "$@" ${PD_EXTRA[@]+"${PD_EXTRA[@]}"})
    local cmd=("${launcher[@]}" "$PD_REPO/train.py" "${args[@]}")
    if [[ -f $out/results.json ]]; then
        # skip only a finished run of these very options; train.py names the keys that differ
        if [[ ${DRY_RUN:-0} == 1 ]] || "$PYTHON" "$PD_REPO/train.py" --same-run "${args[@]}"; then
            echo "Results are available in $out. Skip."
            return 0
        fi
        exit 1
    fi
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        printf '%q ' "${cmd[@]}"
        echo
        return 0
    fi
    pd_status "$out"
    if [[ -n $PD_EPOCH ]]; then
        echo "Resuming the unfinished run in $out (checkpoint found, no results.json)"
    else
        echo "Run this job and save the output to $out"
    fi
    "${cmd[@]}"
}

# ---- entry points --------------------------------------------------------------------------

# Evaluate the model trained in TRAIN_DIR into OUT (skipped when OUT has a result).
# Usage: pd_eval_trained TRAIN_DIR OUT "SCRIPT ARGS to run first" DATASET SEED SUBSAMPLE
pd_eval_trained() {
    local train_dir=$1 out=$2 hint=$3 dataset=$4 seed=$5 subsample=$6
    PD_MODEL_FLAGS=()
    # a finished evaluation is skipped (pd_launch compares its options) without the model flags
    [[ -f $out/results.json ]] || pd_model_flags "$train_dir" "$hint"
    pd_launch "$out" "$dataset" "$seed" --eval-only ${PD_MODEL_FLAGS[@]+"${PD_MODEL_FLAGS[@]}"} \
        -- DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$subsample"
}

pd_base2new_train() {
    pd_usage 2 $# "DATASET SEED" "Train $TRAINER on the base classes of DATASET (${SHOTS:-16} shots)"
    pd_setup
    local dataset=$1 seed=$2
    pd_check_dataset "$dataset"
    pd_check_int SEED "$seed"
    pd_launch "$(pd_run_dir base2new/train_base "$dataset" "$SHOTS" "$seed")" "$dataset" "$seed" \
        -- DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base
}

pd_base2new_test() {
    pd_usage 2 $# "DATASET SEED" "Evaluate the base-class $TRAINER model on the new classes of DATASET"
    pd_setup
    local dataset=$1 seed=$2
    pd_check_dataset "$dataset"
    pd_check_int SEED "$seed"
    pd_eval_trained "$(pd_run_dir base2new/train_base "$dataset" "$SHOTS" "$seed")" \
        "$(pd_run_dir base2new/test_new "$dataset" "$SHOTS" "$seed")" \
        "$(pd_sibling base2new_train.sh) $dataset $seed" "$dataset" "$seed" new
}

pd_xd_train() {
    pd_usage 1 $# "SEED" "Train $TRAINER on all classes of ${XD_SOURCE:-imagenet} (${SHOTS:-16} shots) for cross-dataset transfer"
    pd_setup
    local seed=$1
    pd_check_dataset "$XD_SOURCE"
    pd_check_int SEED "$seed"
    pd_launch "$(pd_run_dir xd/train "$XD_SOURCE" "$SHOTS" "$seed")" "$XD_SOURCE" "$seed" \
        -- DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all
}

pd_xd_test() {
    pd_usage 2 $# "DATASET SEED" "Evaluate the ${XD_SOURCE:-imagenet}-trained $TRAINER model on DATASET (cross-dataset or DG target)"
    pd_setup
    local dataset=$1 seed=$2
    pd_check_dataset "$dataset"
    pd_check_int SEED "$seed"
    pd_eval_trained "$(pd_run_dir xd/train "$XD_SOURCE" "$SHOTS" "$seed")" \
        "$(pd_run_dir xd/test "$dataset" "$SHOTS" "$seed")" \
        "$(pd_sibling xd_train.sh) $seed" "$dataset" "$seed" all
}

pd_few_shot() {
    pd_usage 3 $# "DATASET SHOTS SEED" "Train and test $TRAINER on all classes of DATASET with SHOTS images per class"
    pd_setup
    local dataset=$1 shots=$2 seed=$3
    pd_check_dataset "$dataset"
    pd_check_int SHOTS "$shots"
    pd_check_int SEED "$seed"
    pd_launch "$(pd_run_dir few_shot "$dataset" "$shots" "$seed")" "$dataset" "$seed" \
        -- DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES all
}

# Zero-shot CLIP trains nothing: each evaluation is an eval-only run without --model-dir, written
# where the tables look for the trained methods' numbers.
pd_zs_base2new_test() {
    pd_usage 2 $# "DATASET SEED" "Evaluate zero-shot CLIP on the base and on the new classes of DATASET"
    pd_setup
    local dataset=$1 seed=$2
    pd_check_dataset "$dataset"
    pd_check_int SEED "$seed"
    pd_launch "$(pd_run_dir base2new/train_base "$dataset" "$SHOTS" "$seed")" "$dataset" "$seed" \
        --eval-only -- DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base
    pd_launch "$(pd_run_dir base2new/test_new "$dataset" "$SHOTS" "$seed")" "$dataset" "$seed" \
        --eval-only -- DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new
}

pd_zs_xd_test() {
    pd_usage 2 $# "DATASET SEED" "Evaluate zero-shot CLIP on DATASET (${XD_SOURCE:-imagenet} itself goes to the xd source folder)"
    pd_setup
    local dataset=$1 seed=$2 protocol=xd/test
    pd_check_dataset "$dataset"
    pd_check_int SEED "$seed"
    if [[ $dataset == "$XD_SOURCE" ]]; then
        protocol=xd/train
    fi
    pd_launch "$(pd_run_dir "$protocol" "$dataset" "$SHOTS" "$seed")" "$dataset" "$seed" \
        --eval-only -- DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all
}

# ---- loops over datasets and seeds (scripts/run_*_all.sh) ----------------------------------

pd_run_all() {  # pd_run_all base2new|xd TRAINER [SEED ...]
    local protocol=$1
    shift
    if [[ $# -lt 1 ]]; then
        echo "usage: bash $PD_SELF TRAINER [SEED ...]   (seeds default to 1 2 3; see docs/SCRIPTS.md)" >&2
        exit 2
    fi
    local trainer=$1
    shift
    local seeds=("$@")
    [[ ${#seeds[@]} -gt 0 ]] || seeds=(1 2 3)
    local here="$PD_REPO/scripts" seed
    if [[ ! $trainer =~ ^[A-Za-z0-9_]+$ || ! -d $here/$trainer ]]; then
        local have
        have=$(cd "$here" && for d in */; do printf '%s ' "${d%/}"; done | sed 's/ $//')
        echo "error: no scripts for trainer '$trainer' in $here (available: $have)" >&2
        exit 2
    fi
    for seed in "${seeds[@]}"; do
        pd_check_int SEED "$seed"
    done
    # the datasets to evaluate; zero-shot xd also evaluates the source (the tables' Source column)
    # (the protocols' dataset lists, in the papers' order, are the results library's)
    local source=${XD_SOURCE:-imagenet} datasets=() listed=() d
    if [[ -n ${DATASETS:-} ]]; then
        read -r -a datasets <<<"$DATASETS"
    else
        pd_default_python
        read -r -a listed <<<"$(pd_results datasets "$protocol")"
        [[ ${#listed[@]} -gt 0 ]] || pd_die "cannot list the $protocol datasets with PYTHON=$PYTHON; set PYTHON to the project's interpreter or DATASETS to the datasets to run"
        if [[ $protocol == base2new ]]; then
            datasets=("${listed[@]}")
        else
            [[ -f $here/$trainer/xd_train.sh ]] || datasets=("$source")
            for d in "${listed[@]}"; do
                [[ $d == "$source" ]] || datasets+=("$d")
            done
        fi
    fi
    local failed=()
    _pd_step() {  # _pd_step SCRIPT ARGS...: run one script, remember a failure
        if ! bash "$here/$trainer/$1" "${@:2}"; then
            failed+=("$trainer/$1 ${*:2}")
            return 1
        fi
    }
    for seed in "${seeds[@]}"; do
        if [[ $protocol == base2new ]]; then
            for d in "${datasets[@]}"; do
                if [[ -f $here/$trainer/base2new_train.sh ]]; then
                    _pd_step base2new_train.sh "$d" "$seed" || continue
                fi
                _pd_step base2new_test.sh "$d" "$seed" || true
            done
        elif [[ -f $here/$trainer/xd_train.sh ]]; then
            _pd_step xd_train.sh "$seed" || continue
            for d in "${datasets[@]}"; do
                _pd_step xd_test.sh "$d" "$seed" || true
            done
        else
            for d in "${datasets[@]}"; do
                _pd_step xd_test.sh "$d" "$seed" || true
            done
        fi
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "error: ${#failed[@]} run(s) failed:" >&2
        printf '  %s\n' "${failed[@]}" >&2
        return 1
    fi
    echo "All $protocol runs of $trainer finished (seeds: ${seeds[*]})."
}
