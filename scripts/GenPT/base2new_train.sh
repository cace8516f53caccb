#!/usr/bin/env bash
# GenPT, base-to-new step 1: train on the base classes. Usage: base2new_train.sh DATASET SEED
TRAINER=GenPT CFG_DIR=GenPT DEFAULT_CFG=vit_b16_c4_ep10_batch8_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_train "$@"
