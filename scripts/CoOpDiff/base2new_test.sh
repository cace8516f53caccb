#!/usr/bin/env bash
# CoOpDiff, base-to-new step 2: evaluate on the new classes. Usage: base2new_test.sh DATASET SEED
TRAINER=CoOpDiff CFG_DIR=CoOpDiff DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_test "$@"
