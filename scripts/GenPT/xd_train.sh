#!/usr/bin/env bash
# GenPT, cross-dataset step 1: train on $XD_SOURCE (imagenet). Usage: xd_train.sh SEED
TRAINER=GenPT CFG_DIR=GenPT DEFAULT_CFG=vit_b16_ep50_ctxv1
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_train "$@"
