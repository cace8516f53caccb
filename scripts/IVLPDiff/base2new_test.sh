#!/usr/bin/env bash
# IVLPDiff, base-to-new step 2: evaluate on the new classes. Usage: base2new_test.sh DATASET SEED
TRAINER=IVLPDiff CFG_DIR=IVLPDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_test "$@"
