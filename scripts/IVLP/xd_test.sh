#!/usr/bin/env bash
# IVLP, cross-dataset step 2: evaluate on a target dataset. Usage: xd_test.sh DATASET SEED
TRAINER=IVLP CFG_DIR=IVLP DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_test "$@"
