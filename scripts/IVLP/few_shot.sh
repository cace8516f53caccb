#!/usr/bin/env bash
# IVLP, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=IVLP CFG_DIR=IVLP DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
