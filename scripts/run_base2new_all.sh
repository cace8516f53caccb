#!/usr/bin/env bash
# Base-to-new for one trainer over datasets and seeds: train on base, then test on new (zero-shot
# CLIP: its base2new_test.sh alone). Usage: run_base2new_all.sh TRAINER [SEED ...] (default 1 2 3).
# DATASETS="caltech101 dtd" narrows the dataset list; other variables pass through to the scripts.
# A failed run is reported and the loop goes on; the exit status is 1 if any run failed.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
pd_run_all base2new "$@"
