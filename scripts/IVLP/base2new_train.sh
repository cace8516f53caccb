#!/usr/bin/env bash
# IVLP, base-to-new step 1: train on the base classes. Usage: base2new_train.sh DATASET SEED
TRAINER=IVLP CFG_DIR=IVLP DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_base2new_train "$@"
