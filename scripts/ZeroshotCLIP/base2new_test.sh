#!/usr/bin/env bash
# Zero-shot CLIP on the base and the new classes (no training). Usage: base2new_test.sh DATASET SEED
TRAINER=ZeroshotCLIP CFG_DIR=CoOp DEFAULT_CFG=vit_b16_ep50
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
pd_zs_base2new_test "$@"
