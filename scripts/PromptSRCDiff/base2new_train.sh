#!/usr/bin/env bash
# PromptSRCDiff, base-to-new step 1: train on the base classes. Usage: base2new_train.sh DATASET SEED
TRAINER=PromptSRCDiff CFG_DIR=PromptSRCDiff DEFAULT_CFG=vit_b16_c2_ep20_batch4_4+4ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_train "$@"
