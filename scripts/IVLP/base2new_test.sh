#!/usr/bin/env bash
# IVLP, base-to-new step 2: evaluate on the new classes. Usage: base2new_test.sh DATASET SEED
TRAINER=IVLP CFG_DIR=IVLP DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_test "$@"
