#!/usr/bin/env bash
# MaPLeDiff, cross-dataset step 1: train on $XD_SOURCE (imagenet). Usage: xd_train.sh SEED
TRAINER=MaPLeDiff CFG_DIR=MaPLeDiff DEFAULT_CFG=vit_b16_c2_ep5_batch4_2ctx_cross_datasets
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_train "$@"
