#!/usr/bin/env bash
# VPTDiff, base-to-new step 2: evaluate on the new classes. Usage: base2new_test.sh DATASET SEED
TRAINER=VPTDiff CFG_DIR=VPTDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_8ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_test "$@"
