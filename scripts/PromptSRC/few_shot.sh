#!/usr/bin/env bash
# PromptSRC, few-shot: train and test on all classes. Usage: few_shot.sh DATASET SHOTS SEED
TRAINER=PromptSRC CFG_DIR=PromptSRC DEFAULT_CFG=vit_b16_c2_ep50_batch4_4+4ctx_few_shot
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_few_shot "$@"
