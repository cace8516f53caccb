"""Trainer config keys: the baselines' upstream namespaces plus TRAINER.PD for prompt diffusion."""

from __future__ import annotations

from yacs.config import CfgNode as CN


def add_missing_defaults(cfg: CN, defaults: CN) -> None:
    """Copy into cfg every key of `defaults` it lacks (recursively); existing keys are kept."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = value.clone() if isinstance(value, CN) else value
        elif isinstance(value, CN) and isinstance(cfg[key], CN):
            add_missing_defaults(cfg[key], value)


def extend_cfg(cfg: CN) -> CN:
    """Add every trainer key to a default config (train.py does this before merging files).

    A real Dassl's defaults lack the project's own keys (MODEL.BACKBONE.PATH, DATASET.LIST_ORDER;
    DATASET.SUBSAMPLE_CLASSES, which upstream CoOp adds itself): they come from the built-in ones.
    """
    from promptdiff.engine.config import get_cfg_default

    add_missing_defaults(cfg, get_cfg_default())
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"

    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"

    cfg.TRAINER.VPT = CN()
    cfg.TRAINER.VPT.N_CTX_VISION = 2
    cfg.TRAINER.VPT.CTX_INIT = "a photo of a"
    cfg.TRAINER.VPT.PREC = "fp16"
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1

    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9

    cfg.TRAINER.IVLP = CN()
    cfg.TRAINER.IVLP.N_CTX_VISION = 2
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2
    cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"
    cfg.TRAINER.IVLP.PREC = "fp16"
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9  # 0: no vision prompts (language-only IVLP)
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9
    # GenPT (arXiv 2410.03189): CoOp's context plus the two terms; see trainers/genpt.py
    gp = cfg.TRAINER.GENPT = CN()
    gp.N_CTX = 16
    gp.CTX_INIT = ""
    gp.PREC = "fp16"
    gp.TEMPLATES = []  # hand-crafted view; [] = the dataset's template (ZeroshotCLIP's table)
    gp.MI_WEIGHT = 1.0  # weight of the InfoNCE term between the two views; 0 disables it
    gp.MI_TEMP = 0.07  # its temperature
    gp.AUG_MODE = "prototype"  # none | mixup (within the batch) | prototype (per-class memory)
    gp.AUG_STRENGTH = 1.0  # Dirichlet concentration of the mixing weights
    gp.AUG_SAMPLES = 1  # mixed features per class present in the batch
    gp.AUG_MEMORY = 8  # prototype: recent features remembered per class
    gp.ENSEMBLE = 0.0  # inference: weight of the hand-crafted view's logits (0 = soft prompt only)

    cfg.TRAINER.ZSCLIP = CN()
    cfg.TRAINER.ZSCLIP.PREC = "fp16"

    pd = cfg.TRAINER.PD = CN()
    # schedule: -1 = the first 80 % of OPTIM.MAX_EPOCH train the baseline, the rest is stage 2
    pd.STAGE1_EPOCHS = -1
    # per-sample overfitting
    pd.OVERFIT_STEPS = 10
    # step size, or auto: calibrated on the first stage-2 batch relative to the prompt's rms
    # (adam moves each element by about lr per step, so a fixed lr means nothing across prompts)
    pd.OVERFIT_LR = "auto"
    pd.OVERFIT_OPTIM = "adam"
    # what is diffused and how
    pd.TARGET = "residual"  # residual (p* - p) | absolute (p*)
    pd.FORMULATION = "vp"  # vp (DDPM) | flow (rectified flow)
    pd.SCHEDULE = "linear"  # linear | cosine (vp only)
    pd.TIMESTEPS = 100
    pd.PREDICTION = "x0"  # x0 | eps | v
    pd.SAMPLER = "ddim"  # ddim | euler | heun | dpmpp_2m
    pd.STEPS = 5
    pd.NUM_SAMPLES = 1  # M noise draws whose logits are averaged at test time
    pd.NOISE_SEED = 0
    # sample (generated prompts) | base (the baseline's prompt alone) | mean (base + mean target)
    pd.INFERENCE = "sample"
    # denoiser
    pd.DEPTH = 4
    pd.WIDTH = 256
    pd.HEADS = 8
    pd.DROPOUT = 0.1
    pd.EMA = 0.999  # 0 disables the EMA copy
    # stage-2 optimisation
    pd.LR = 1e-3
    pd.WEIGHT_DECAY = 0.0
    pd.DIFF_WEIGHT = 10.0
    pd.CE_WEIGHT = 1.0  # cross-entropy through the one-step generated prompt; 0 disables it
    pd.UPDATE_BASE = False  # keep training the baseline's prompt in stage 2
    pd.BATCH_SIZE = 0  # stage-2 training batch size; 0 = DATALOADER.TRAIN_X.BATCH_SIZE
    # VPTDiff: diffuse only the first N prompt layers (0 = all)
    pd.DIFFUSE_LAYERS = 0
    # text encoder chunk (sequences per forward) for per-image class prompts; 0 = no chunking
    pd.TEXT_CHUNK = 0
    # encode the class-independent [SOS] + context prefix once per prompt, not once per class
    # (exact; CLASS_TOKEN_POSITION end, CoCoOp, MaPLe and their Diff trainers)
    pd.TEXT_SHARE_PREFIX = True
    # classes in the per-sample over-fitting loss: the true class + the hardest others under the
    # base prompt; 0, or >= the class count, = all classes (exact)
    pd.OVERFIT_CLASSES = 64
    return cfg
