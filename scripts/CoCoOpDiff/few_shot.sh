#!/usr/bin/env bash
# CoCoOpDiff, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=CoCoOpDiff CFG_DIR=CoCoOpDiff DEFAULT_CFG=vit_b16_c4_ep10_batch1_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
