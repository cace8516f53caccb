#!/usr/bin/env bash
# IVLP, cross-dataset step 1: train on $XD_SOURCE (imagenet). Usage: xd_train.sh SEED
TRAINER=IVLP CFG_DIR=IVLP DEFAULT_CFG=vit_b16_c2_ep5_batch4_2+2ctx
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_xd_train "$@"
