#!/usr/bin/env bash
# GenPT, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=GenPT CFG_DIR=GenPT DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
