#!/usr/bin/env bash
# PromptSRC, base-to-new step 2: evaluate on the new classes. Usage: base2new_test.sh DATASET SEED
TRAINER=PromptSRC CFG_DIR=PromptSRC DEFAULT_CFG=vit_b16_c2_ep20_batch4_4+4ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_test "$@"
