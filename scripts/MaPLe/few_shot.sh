#!/usr/bin/env bash
# MaPLe, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=MaPLe CFG_DIR=MaPLe DEFAULT_CFG=vit_b16_c2_ep5_batch4_2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
