#!/usr/bin/env bash
# GenPTDiff, cross-dataset step 2: evaluate on a target dataset. Usage: xd_test.sh DATASET SEED
TRAINER=GenPTDiff CFG_DIR=GenPTDiff DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_test "$@"
