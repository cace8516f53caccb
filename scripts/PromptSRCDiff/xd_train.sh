#!/usr/bin/env bash
# PromptSRCDiff, cross-dataset step 1: train on $XD_SOURCE (imagenet). Usage: xd_train.sh SEED
TRAINER=PromptSRCDiff CFG_DIR=PromptSRCDiff DEFAULT_CFG=vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_train "$@"
