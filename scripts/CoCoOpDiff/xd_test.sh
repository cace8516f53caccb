#!/usr/bin/env bash
# CoCoOpDiff, cross-dataset step 2: evaluate on a target dataset. Usage: xd_test.sh DATASET SEED
TRAINER=CoCoOpDiff CFG_DIR=CoCoOpDiff DEFAULT_CFG=vit_b16_c4_ep10_batch1_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_test "$@"
