"""Multi-GPU training and evaluation under `torchrun --nproc_per_node N train.py ...`.

Without torchrun (or with WORLD_SIZE 1) none of this does anything, so a single-process run takes
exactly the code path it always took.

Design. torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) initialise one
process group: nccl on CUDA (one GPU per process, LOCAL_RANK), gloo on the CPU. Data-parallel
training needs three things, each done once here:

- Same model on every rank. The trainable modules (prompt learner, denoiser with its EMA and
  target statistics) are broadcast from rank 0 when training starts, as DistributedDataParallel
  does at construction. CLIP is frozen and identical everywhere (same weights file), so it is never
  touched.
- Same gradient on every rank. After backward, `all_reduce_grads` averages the gradients of the
  parameters about to be stepped (one flat all-reduce per step), which is what DDP's reducer
  computes. Buffers a forward pass updates (the denoiser's running target statistics) are then
  taken from rank 0, as DDP's default broadcast_buffers does. The modules are deliberately not
  wrapped in `DistributedDataParallel`: the trainers never call the trainable module's forward
  (CoOp's forward is the frozen CLIP's, and the diffusion mixin calls model.condition /
  base_prompt / logits_for), while DDP only arms its gradient hooks inside the wrapped module's
  forward; and a parameter unused in a step (None grad) would need find_unused_parameters. Here
  a parameter without a gradient on every rank keeps grad None (so Adam skips it, as in one
  process); one with a gradient on some ranks gets the average with zeros for the others.
  Because the reduction runs only in the optimiser step of the named models, stage 2's
  per-sample over-fitting, which takes `torch.autograd.grad` w.r.t. per-sample copies and never
  fills a parameter's `.grad`, stays per rank and costs no communication; so does test-time
  sampling. Each rank draws its own random numbers (augmentation, diffusion noise, dropout),
  reseeded from (SEED, rank, epoch) at every epoch, so a resumed run draws what the original did.
- A shard of the data per rank. DistributedSampler (set_epoch each epoch) splits the training set;
  DATALOADER.TRAIN_X.BATCH_SIZE (and TRAINER.PD.BATCH_SIZE) stay the *global* batch, split evenly
  over the ranks, so N GPUs run the experiment of the configs, not one with an N-times batch.
  Evaluation shards the test set with DistributedSampler(shuffle=False) and `gather_in_order`
  puts every prediction back in dataset order, dropping the sampler's padding, so accuracy and
  macro-F1 equal the single-process figures. Prompt diffusion's test noise comes from one seeded
  stream drawn batch by batch; `ShardNoise` replays that stream so each image gets the noise it
  gets in one process.

Every rank builds the dataset with the same seed; rank 0 builds it first (it may write the split
and few-shot caches), the others wait and then read them, and a digest of the splits is compared
across ranks. Only rank 0 writes logs, checkpoints, tensorboard and results.json.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(use_cuda: bool) -> bool:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); False without one."""
    if not launched_by_torchrun():
        return False
    if dist.is_initialized():
        return True
    if use_cuda and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise RuntimeError(
                f"torchrun process LOCAL_RANK {local_rank} has no GPU ({n_gpus} visible); use "
                f"--nproc_per_node {n_gpus} or fewer (NGPU in the scripts)."
            )
        # torch.device("cuda") in the trainer then means this process's GPU
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return True


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def main_process_first(fn: Callable[[], T]) -> T:
    """Run fn on rank 0, then on the other ranks, so only rank 0 writes caches fn may create."""
    if not is_distributed():
        return fn()
    if is_main_process():
        try:
            result = fn()
        except Exception:
            dist.broadcast_object_list([False], src=0)
            raise
        dist.broadcast_object_list([True], src=0)
        return result
    succeeded = [None]
    dist.broadcast_object_list(succeeded, src=0)
    if not succeeded[0]:
        raise RuntimeError("Stopped: torchrun rank 0 failed first (its error is above).")
    return fn()


def check_same_on_all_ranks(text: str, what: str) -> None:
    """Raise when `text` (e.g. the list of training images) is not the same on every rank."""
    if not is_distributed():
        return
    digest = hashlib.sha256(text.encode()).hexdigest()
    digests = [None] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(
            f"{what} differs between torchrun ranks 0 and {differing}; delete the dataset's "
            f"split_fewshot cache and use a fixed --seed (>= 0)."
        )


def per_rank_batch_size(batch_size: int, key: str) -> int:
    """The share of the global batch `batch_size` (config key `key`) that one rank loads."""
    n = world_size()
    if batch_size % n:
        raise ValueError(
            f"{key} {batch_size} is the global batch and must be divisible by the {n} torchrun "
            f"processes; set {key} to a multiple of {n} or change --nproc_per_node (NGPU)."
        )
    return batch_size // n


def shard_sampler(data_source, shuffle: bool, seed: int) -> DistributedSampler:
    """This rank's share of data_source; shuffled identically on every rank after set_epoch."""
    return DistributedSampler(data_source, shuffle=shuffle, seed=max(seed, 0))


def begin_epoch(loader, epoch: int, seed: int) -> None:
    """set_epoch on a DistributedSampler, and per-rank random streams for augmentation, noise
    and dropout (the same seed on every rank would give each rank's k-th image the same draws)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if is_distributed() and seed >= 0:
        # derived from (seed, rank, epoch) only, so a resumed run draws what the original drew
        key = hashlib.sha256(f"{seed}/{rank()}/{epoch}".encode()).digest()
        s = int.from_bytes(key[:4], "little")
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into these tensors on every rank."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def broadcast_modules(modules: Iterable[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers into every rank's modules."""
    for module in modules:
        broadcast_tensors([*module.parameters(), *module.buffers()])


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over the ranks in one all-reduce; a grad that is None everywhere stays None."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = _comm_device()
    flat = [
        p.grad.detach().reshape(-1).to(device, torch.float32)
        if p.grad is not None
        else torch.zeros(p.numel(), device=device)
        for p in params
    ]
    # one presence flag per parameter rides along, so a single collective suffices
    flags = torch.tensor([float(p.grad is not None) for p in params], device=device)
    buffer = torch.cat([*flat, flags])
    dist.all_reduce(buffer)
    present = buffer[-len(params) :]
    offset = 0
    for p, count in zip(params, present.tolist()):
        chunk = buffer[offset : offset + p.numel()].view_as(p) / world_size()
        offset += p.numel()
        if count == 0:
            continue
        if p.grad is None:
            p.grad = chunk.to(p.device, p.dtype)
        else:
            p.grad.copy_(chunk)


def gather_in_order(local: torch.Tensor, num_items: int) -> torch.Tensor:
    """Every rank's per-item values of a DistributedSampler(shuffle=False) shard, in dataset order.

    Rank r holds positions r, r + W, r + 2W, ... of range(num_items) padded with its first items to
    a multiple of W; interleaving the ranks' rows and cutting at num_items drops the padding.
    """
    if not is_distributed():
        return local[:num_items]
    device = _comm_device()
    local = local.to(device)
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.stack(parts, dim=1).reshape(-1, *local.shape[1:])[:num_items].cpu()


class ShardNoise:
    """One rank's rows of a noise stream that a single process draws batch by batch.

    In one process, test batch b (`batch_size` items, the last one shorter) draws `draws_per_batch`
    tensors randn([len(b), *shape]) from `generator`, in order. Here the same tensors are drawn
    (and discarded once passed) and `next(n, shape)` returns, for this rank's next n items, the
    rows those items get in one process, so a shard's generated prompts equal the single-process
    ones. The sampler's padding items get zeros (their predictions are dropped).
    """

    def __init__(
        self,
        generator: torch.Generator,
        batch_size: int,
        num_items: int,
        draws_per_batch: int = 1,
        world: int | None = None,
        rank_: int | None = None,
    ):
        self.generator = generator
        self.batch_size = batch_size
        self.num_items = num_items
        self.draws_per_batch = draws_per_batch
        self.world = world_size() if world is None else world
        self.rank = rank() if rank_ is None else rank_
        self._pos = 0  # this rank's items consumed
        self._draw = 0  # which of draws_per_batch the next call is
        self._cache: dict[int, list[torch.Tensor]] = {}
        self._next_batch = 0

    def _batch_draws(self, b: int, shape: tuple) -> list[torch.Tensor]:
        while self._next_batch <= b:
            start = self._next_batch * self.batch_size
            size = min(self.batch_size, self.num_items - start)
            self._cache[self._next_batch] = [
                torch.randn((size, *shape), generator=self.generator, dtype=torch.float32)
                for _ in range(self.draws_per_batch)
            ]
            self._next_batch += 1
        return self._cache[b]

    def next(self, n: int, shape: tuple) -> torch.Tensor:
        """Noise [n, *shape] for this rank's next n items (call draws_per_batch times per batch)."""
        first = self.rank + self._pos * self.world
        for old in [k for k in self._cache if k < first // self.batch_size]:
            del self._cache[old]  # every item of those batches has been served
        rows = []
        for i in range(n):
            g = first + i * self.world
            if g >= self.num_items:
                rows.append(torch.zeros(shape))
                continue
            b = g // self.batch_size
            rows.append(self._batch_draws(b, tuple(shape))[self._draw][g - b * self.batch_size])
        self._draw += 1
        if self._draw == self.draws_per_batch:
            self._draw = 0
            self._pos += n
        return torch.stack(rows)
