#!/usr/bin/env bash
# VPTDiff, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=VPTDiff CFG_DIR=VPTDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_8ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
