#!/usr/bin/env bash
# MaPLeDiff, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=MaPLeDiff CFG_DIR=MaPLeDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
