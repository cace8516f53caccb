"""Run identity compares only the TRAINER.<NS> blocks a trainer reads (config_namespaces): the
differences helper leaves the others out, and every registered trainer, built and run for a step
with recording config blocks, reads no block it does not declare."""

from __future__ import annotations

import pytest
import torch
from conftest import train_args
from test_model_factory import DIFF, HOSTS, _registered
from yacs.config import CfgNode as CN

from promptdiff.engine.runinfo import differences
from train import build_parser, setup_cfg


def test_differences_leave_out_other_trainers_blocks():
    saved = {"TRAINER.NAME": "CoOp", "TRAINER.COOP.N_CTX": 16, "TRAINER.IVLP.N_CTX_TEXT": 2,
             "TRAINER.PD.STEPS": 1, "OPTIM.LR": 0.002}  # fmt: skip
    now = {"TRAINER.NAME": "CoOpDiff", "TRAINER.COOP.N_CTX": 4, "TRAINER.IVLP.N_CTX_TEXT": 8,
           "TRAINER.PD.STEPS": 5, "OPTIM.LR": 0.1}  # fmt: skip
    every = differences(saved, now)
    assert len(every) == 5
    assert differences(saved, now, namespaces=("COOP", "PD")) == [
        "OPTIM.LR: 0.002 -> 0.1",
        "TRAINER.COOP.N_CTX: 16 -> 4",
        "TRAINER.NAME: 'CoOp' -> 'CoOpDiff'",
        "TRAINER.PD.STEPS: 1 -> 5",
    ]
    assert differences(saved, now, namespaces=()) == [
        "OPTIM.LR: 0.002 -> 0.1",
        "TRAINER.NAME: 'CoOp' -> 'CoOpDiff'",
    ]


class _Recording(CN):
    """A TRAINER.<NS> block that notes its namespace in READS whenever one of its keys is read."""

    READS: set[str] = set()
    NS = ""

    def __getitem__(self, key):
        _Recording.READS.add(type(self).NS)
        return super().__getitem__(key)

    def get(self, key, default=None):
        _Recording.READS.add(type(self).NS)
        return super().get(key, default)


def _record_blocks(cfg) -> None:
    cfg.defrost()
    for ns in list(cfg.TRAINER.keys()):
        block = cfg.TRAINER[ns]
        if isinstance(block, CN):
            cls = type(f"Recording{ns}", (_Recording,), {"NS": ns})
            cfg.TRAINER[ns] = cls(dict(block))
    cfg.freeze()


@pytest.mark.parametrize("name", _registered())
def test_a_trainer_reads_only_the_blocks_it_declares(name, shapes_root, tiny_weights, tmp_path):
    import promptdiff.datasets  # noqa: F401
    from promptdiff.host import TRAINER_REGISTRY, build_trainer, set_random_seed

    config, extra = HOSTS[name.removesuffix("Diff")]
    klass = TRAINER_REGISTRY.get(name)
    diff = DIFF if name.endswith("Diff") else ()
    args = train_args(
        shapes_root,
        str(tmp_path),
        name,
        config,
        tiny_weights,
        *extra,
        *diff,
        prec_key=klass.CFG_KEY,
    )
    cfg = setup_cfg(build_parser().parse_args(args))
    _record_blocks(cfg)
    _Recording.READS.clear()
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    batch = next(iter(trainer.train_loader_x))
    if hasattr(trainer, "optim"):
        trainer.set_model_mode("train")
        trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
        trainer.forward_backward(batch)
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    with torch.no_grad():
        logits = trainer.model_inference(batch["img"])
    assert logits.shape[0] == batch["img"].shape[0]
    declared = set(klass.config_namespaces())
    assert _Recording.READS, "the recording blocks saw no read: the test no longer records"
    assert _Recording.READS <= declared, (
        f"{name} reads TRAINER blocks {sorted(_Recording.READS - declared)} it does not declare "
        "(CFG_KEY / CFG_ALSO_READS): run identity would ignore them"
    )
    assert klass.CFG_KEY in _Recording.READS
