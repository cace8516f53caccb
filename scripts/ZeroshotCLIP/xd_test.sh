#!/usr/bin/env bash
# Zero-shot CLIP on a cross-dataset/DG target or the source (no training). Usage: xd_test.sh DATASET SEED
TRAINER=ZeroshotCLIP CFG_DIR=CoOp DEFAULT_CFG=vit_b16_ep50
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_zs_xd_test "$@"
