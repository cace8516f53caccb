#!/usr/bin/env bash
# GenPTDiff, base-to-new step 2: evaluate on the new classes. Usage: base2new_test.sh DATASET SEED
TRAINER=GenPTDiff CFG_DIR=GenPTDiff DEFAULT_CFG=vit_b16_c4_ep10_batch8_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_test "$@"
