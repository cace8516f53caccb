"""Run by tests/test_ddp.py under torchrun: checks the distributed helpers in a real process group,
then runs train.py's command line, recording each evaluation's per-image predictions and a digest
of the rank's trained tensors.

usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT train.py ARGS...
Each rank writes OUT/rank<r>.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys

import torch
import torch.distributed as dist

from promptdiff.engine import distributed as ddp


def helper_checks(out: str) -> dict:
    dist.init_process_group("gloo")
    r, w = ddp.rank(), ddp.world_size()
    found = {"world": w}

    # gradients: averaged; a grad missing on some ranks counts as zero; None everywhere stays None
    both, some, none = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    both.grad = torch.full((3,), float(r + 1))
    if r == 1:
        some.grad = torch.full((3,), 2.0)
    ddp.all_reduce_grads([both, some, none])
    found["grads"] = [both.grad.tolist(), None if some.grad is None else some.grad.tolist()]
    found["none_stays_none"] = none.grad is None

    # broadcast: every rank ends with rank 0's parameters and buffers
    module = torch.nn.Linear(2, 2)
    module.register_buffer("count", torch.tensor([float(r)]))
    with torch.no_grad():
        module.weight.fill_(float(r + 7))
    ddp.broadcast_modules([module])
    found["broadcast"] = [module.weight.flatten().tolist(), module.count.tolist()]

    # gather: rank r holds positions r, r + w, ... of 5 items (padded); back in order, unpadded
    local = torch.tensor([r + j * w for j in range(-(-5 // w))])
    found["gathered"] = ddp.gather_in_order(local * 10, 5).tolist()

    # rank 0 runs first: what it writes is there when the others run
    marker = os.path.join(out, "first.txt")

    def write_or_read() -> bool:
        if ddp.is_main_process():
            with open(marker, "w") as f:
                f.write("x")
            return True
        return os.path.isfile(marker)

    found["main_first"] = ddp.main_process_first(write_or_read)

    def fail_on_rank_0() -> None:
        if ddp.is_main_process():
            raise ValueError("bad dataset")

    try:
        ddp.main_process_first(fail_on_rank_0)
    except (ValueError, RuntimeError) as exc:
        found["main_first_error"] = str(exc)

    for text in ("same", f"rank {r}"):
        try:
            ddp.check_same_on_all_ranks(text, "The dataset split")
            found.setdefault("same_check", []).append("ok")
        except RuntimeError as exc:
            found.setdefault("same_check", []).append(str(exc))
    try:
        ddp.per_rank_batch_size(3, "DATALOADER.TRAIN_X.BATCH_SIZE")
    except ValueError as exc:
        found["batch_error"] = str(exc)
    found["batch_share"] = ddp.per_rank_batch_size(4, "DATALOADER.TRAIN_X.BATCH_SIZE")
    return found  # the group stays up: train.py's init_distributed joins it


def main() -> None:
    out, script, *argv = sys.argv[1:]
    found = helper_checks(out)
    rank = int(os.environ["RANK"])

    from promptdiff.engine.trainer import SimpleTrainer

    original = SimpleTrainer.test
    found["predictions"] = []

    def recording_test(self, split=None):
        result = original(self, split)
        found["predictions"].append(list(self.evaluator._y_pred))
        # what this rank holds of every trained tensor, to compare the ranks bit for bit
        digest = hashlib.sha256()
        for name in self.get_model_names():
            for key, value in sorted(self._models[name].state_dict().items()):
                digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
        found["state_digest"] = digest.hexdigest()
        return result

    SimpleTrainer.test = recording_test
    sys.argv = [script, *argv]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    found["exit_code"] = code
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(found, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
