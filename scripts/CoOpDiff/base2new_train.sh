#!/usr/bin/env bash
# CoOpDiff, base-to-new step 1: train on the base classes. Usage: base2new_train.sh DATASET SEED
TRAINER=CoOpDiff CFG_DIR=CoOpDiff DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_train "$@"
