#!/usr/bin/env bash
# GenPTDiff, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=GenPTDiff CFG_DIR=GenPTDiff DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
