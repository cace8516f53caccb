#!/usr/bin/env bash
# PromptSRC, cross-dataset step 1: train on $XD_SOURCE (imagenet). Usage: xd_train.sh SEED
TRAINER=PromptSRC CFG_DIR=PromptSRC DEFAULT_CFG=vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_train "$@"
