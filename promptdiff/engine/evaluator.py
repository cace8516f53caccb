"""Classification evaluator printing Dassl's "=> result" block, which every parser reads."""

from __future__ import annotations

import os

import numpy as np
import torch

from promptdiff.engine import distributed
from promptdiff.engine.utils import logger, torch_save_atomic


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the labels present in y_true (sklearn's macro average with labels=unique)."""
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


class Classification:
    """Accumulates predictions; evaluate() prints and returns accuracy, error and macro F1 in %."""

    def __init__(self, cfg, lab2cname=None):
        self.cfg = cfg
        self._lab2cname = lab2cname or {}
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: list[int] = []
        self._y_pred: list[int] = []

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        pred = mo.max(1)[1]
        self._correct += int(pred.eq(gt).sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.cpu().tolist())
        self._y_pred.extend(pred.cpu().tolist())

    def gather(self, num_items: int) -> None:
        """Under torchrun: replace this rank's shard by all ranks' predictions in dataset order."""
        y_true = distributed.gather_in_order(torch.tensor(self._y_true), num_items)
        y_pred = distributed.gather_in_order(torch.tensor(self._y_pred), num_items)
        self._y_true, self._y_pred = y_true.tolist(), y_pred.tolist()
        self._total = len(self._y_true)
        self._correct = int((y_true == y_pred).sum())

    def evaluate(self) -> dict:
        acc = 100.0 * self._correct / max(self._total, 1)
        y_true, y_pred = np.asarray(self._y_true), np.asarray(self._y_pred)
        f1 = 100.0 * macro_f1(y_true, y_pred)
        results = {"accuracy": acc, "error": 100.0 - acc, "macro_f1": f1}
        logger.info(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {100.0 - acc:.1f}%\n"
            f"* macro_f1: {f1:.1f}%"
        )
        if self.cfg.TEST.PER_CLASS_RESULT:
            accs = []
            logger.info("=> per-class result")
            for label in sorted(set(self._y_true)):
                mask = y_true == label
                n, c = int(mask.sum()), int((y_pred[mask] == label).sum())
                accs.append(100.0 * c / n)
                name = self._lab2cname.get(label, str(label))
                logger.info(
                    f"* class: {label} ({name})\ttotal: {n:,}\tcorrect: {c:,}\tacc: {accs[-1]:.1f}%"
                )
            results["perclass_accuracy"] = float(np.mean(accs))
            logger.info(f"* average: {results['perclass_accuracy']:.1f}%")
        if self.cfg.TEST.COMPUTE_CMAT and distributed.is_main_process():
            n_cls = int(max(y_true.max(), y_pred.max())) + 1
            cmat = np.zeros((n_cls, n_cls))
            np.add.at(cmat, (y_true, y_pred), 1)
            cmat = cmat / np.maximum(cmat.sum(1, keepdims=True), 1)
            path = os.path.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch_save_atomic(torch.from_numpy(cmat), path)
            logger.info(f"Confusion matrix is saved to {path}")
        results["total"] = self._total
        results["correct"] = self._correct
        return results


EVALUATORS = {"Classification": Classification}


def build_evaluator(cfg, lab2cname=None) -> Classification:
    name = cfg.TEST.EVALUATOR
    if name not in EVALUATORS:
        raise ValueError(f"TEST.EVALUATOR {name!r} is unknown; use one of {sorted(EVALUATORS)}.")
    if cfg.VERBOSE:
        logger.info(f"Loading evaluator: {name}")
    return EVALUATORS[name](cfg, lab2cname=lab2cname)
