#!/usr/bin/env bash
# PromptSRCDiff, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=PromptSRCDiff CFG_DIR=PromptSRCDiff DEFAULT_CFG=vit_b16_c2_ep50_batch4_4+4ctx_few_shot
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
