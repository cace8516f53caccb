#!/usr/bin/env bash
# Cross-dataset and domain generalisation for one trainer: per seed, train on $XD_SOURCE (imagenet)
# and test on the 10 other base-to-new datasets and the 4 ImageNet variants (zero-shot CLIP: its
# xd_test.sh on the source and every target). Usage: run_xd_all.sh TRAINER [SEED ...] (default
# 1 2 3). DATASETS="dtd imagenet_a" narrows the targets; other variables pass through.
# A failed run is reported and the loop goes on; the exit status is 1 if any run failed.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
pd_run_all xd "$@"
