#!/usr/bin/env bash
# CoOpDiff, cross-dataset step 1: train on $XD_SOURCE (imagenet). Usage: xd_train.sh SEED
TRAINER=CoOpDiff CFG_DIR=CoOpDiff DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_train "$@"
