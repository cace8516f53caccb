#!/usr/bin/env bash
# IVLPDiff, base-to-new step 1: train on the base classes. Usage: base2new_train.sh DATASET SEED
TRAINER=IVLPDiff CFG_DIR=IVLPDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_train "$@"
