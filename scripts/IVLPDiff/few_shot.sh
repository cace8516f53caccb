#!/usr/bin/env bash
# IVLPDiff, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=IVLPDiff CFG_DIR=IVLPDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
