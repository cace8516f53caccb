#!/usr/bin/env bash
# VPT, cross-dataset step 2: evaluate on a target dataset. Usage: xd_test.sh DATASET SEED
TRAINER=VPT CFG_DIR=VPT DEFAULT_CFG=vit_b16_c2_ep5_batch4_8ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_test "$@"
