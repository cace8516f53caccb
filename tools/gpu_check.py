"""The Python parts of tools/gpu_check.sh: per-trainer GPU steps, the torchrun smoke test, and the
summary (one JSON, one short table): `python -m promptdiff.tools.gpu_check PART ...`.

- `trainers`: every registered trainer built as train.py builds it (tools/benchmark.py's `build`,
  its own config file) on a randomly initialised CLIP of the chosen size, once per precision
  (TRAINER.<KEY>.PREC fp16 = CLIP in fp16 with fp32 masters; amp = autocast, bf16 where the GPU
  has it). Per trainer: one warm-up and one timed training step (a *Diff trainer's stage 2: the
  over-fitting and the denoiser update; the warm-up also calibrates OVERFIT_LR auto), and one
  evaluation batch after `before_test` (warm-up, then timed); time per image, peak GPU memory, and
  whether the loss and logits are finite and a trainable tensor moved. A trainer that fails is one
  row with its error; the file is rewritten after every row, so a part cut by its timeout keeps
  the rows it finished.
- `ddp`: under torchrun, the engine's process group (nccl on GPUs, gloo on CPU) and its two
  collectives, checked against the values every rank can compute alone.
- `summary`: the parts' records and statuses in one JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback

import torch

from promptdiff.fileio import atomic_write


def write_json(path: str, record) -> None:
    atomic_write(path, lambda f: json.dump(record, f, indent=1))


# ---- trainers ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    """(seconds, result) of one call, CUDA synchronised on both sides."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def check_trainer(name: str, prec: str, n_classes: int, images: int, ws, opts, device: str) -> dict:
    """One training step and one evaluation batch of `name` at precision `prec` on `device` (see
    the module docstring); raises what the trainer raises."""
    from promptdiff.tools.benchmark import batch, build

    cuda = device == "cuda"
    key = _registry().get(name).CFG_KEY
    extra = ("USE_CUDA", str(cuda), f"TRAINER.{key}.PREC", prec)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = build(name, n_classes, ws, opts, extra)
    row = {"trainer": name, "prec": prec, "classes": n_classes, "images": images}
    row["build_s"] = round(time.perf_counter() - start, 2)
    device = trainer.device
    row["device"] = str(device)
    # ZeroshotCLIP has neither: nothing to train, only the evaluation
    modules = [getattr(trainer, name, None) for name in ("model", "diffusion")]
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    row["trainable"] = sum(p.numel() for p in params)
    if params:
        x, y = batch(trainer, images, "train")
        trainer.set_model_mode("train")
        trainer.batch_idx, trainer.num_batches = 0, 2  # not the last batch: no LR step
        stage1 = getattr(trainer, "stage1_epochs", None)
        trainer.epoch = stage1(trainer.cfg) if stage1 else 0
        row["stage"] = 2 if stage1 else 1
        step = lambda: trainer.forward_backward({"img": x, "label": y})  # noqa: E731
        first_s, _ = _timed(step, device)
        before = [p.detach().clone() for p in params]
        step_s, summary = _timed(step, device)
        row["train_first_ms"] = round(1000 * first_s, 1)
        row["train_ms_per_image"] = round(1000 * step_s / images, 2)
        row["loss"] = float(summary["loss"])
        row["loss_finite"] = math.isfinite(row["loss"])
        row["params_moved"] = any(not torch.equal(a, p) for a, p in zip(before, params))
    x, _ = batch(trainer, images, "test")
    with torch.no_grad():
        trainer.set_model_mode("eval")
        trainer.before_test("test")
        trainer.model_inference(x)
        eval_s, logits = _timed(lambda: trainer.model_inference(x), device)
    row["eval_ms_per_image"] = round(1000 * eval_s / images, 2)
    row["logits_shape_ok"] = tuple(logits.shape) == (images, trainer.num_classes)
    row["logits_finite"] = bool(torch.isfinite(logits).all())
    peak = _peak_mb(device)
    row["peak_mb"] = None if peak is None else round(peak, 1)
    row["ok"] = bool(
        row["logits_shape_ok"]
        and row["logits_finite"]
        and row.get("loss_finite", True)
        and row.get("params_moved", True)
    )
    return row


def _registry():
    from promptdiff.tools.benchmark import registry

    return registry()


def run_trainers(args) -> int:
    from promptdiff.tools.benchmark import Options, Workspace

    names = args.trainers or _registry().registered_names()
    opts = Options(size=args.size, workdir=args.workdir, verbose=False)
    record = {"size": args.size, "device": args.device, "rows": []}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ws = Workspace(args.workdir or tmp, args.size)
        for prec in args.precs:
            for name in names:
                try:
                    row = check_trainer(
                        name, prec, args.classes, args.images, ws, opts, args.device
                    )
                except Exception as exc:  # recorded: one failing trainer must not hide the rest
                    row = {"trainer": name, "prec": prec, "ok": False}
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    row["traceback"] = traceback.format_exc(limit=-4)
                record["rows"].append(row)
                write_json(args.out, record)
                print(_row_line(row), flush=True)
    write_json(args.out, record)
    return 0 if all(r["ok"] for r in record["rows"]) else 1


def _row_line(row: dict) -> str:
    if "error" in row:
        return f"{row['trainer']} {row['prec']}: FAILED {row['error']}"
    return (
        f"{row['trainer']} {row['prec']}: train {row.get('train_ms_per_image', '-')} ms/image, "
        f"eval {row['eval_ms_per_image']} ms/image, peak {row['peak_mb']} MB, ok {row['ok']}"
    )


# ---- ddp -----------------------------------------------------------------------------------------
def run_ddp(args) -> int:
    """Under torchrun: a process group over the ranks and its collectives, raw and through the
    engine's helpers; rank 0 writes the record."""
    import torch.distributed as dist

    from promptdiff.engine import distributed as ddp

    if "RANK" not in os.environ:
        raise SystemExit("gpu_check ddp: run it under torchrun (python -m torch.distributed.run).")
    cuda = args.device == "cuda"
    # the engine joins only a group of two or more; one GPU still gets a one-rank nccl group
    if not ddp.init_distributed(cuda):
        if cuda:
            torch.cuda.set_device(0)
            dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
        else:
            dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    total = torch.tensor([float(r + 1)], device=device)
    dist.all_reduce(total)
    parts = [torch.zeros(1, device=device) for _ in range(w)]
    dist.all_gather(parts, torch.tensor([float(r)], device=device))
    param = torch.nn.Parameter(torch.zeros(4, device=device))
    param.grad = torch.full((4,), float(r + 1), device=device)
    ddp.all_reduce_grads([param])
    gathered = ddp.gather_in_order(torch.tensor([r + j * w for j in range(3)]), 3 * w).tolist()
    found = {
        "backend": dist.get_backend(),
        "world": w,
        "all_reduce_ok": total.item() == w * (w + 1) / 2,
        "all_gather_ok": [p.item() for p in parts] == [float(i) for i in range(w)],
        # ranks hold 1..w: the engine's gradient average is their mean
        "grad_average_ok": param.grad.tolist() == [(w + 1) / 2] * 4,
        "gather_in_order_ok": gathered == list(range(3 * w)),
    }
    found["ok"] = all(v for k, v in found.items() if k.endswith("_ok"))
    if r == 0:
        write_json(args.out, found)
        print(json.dumps(found), flush=True)
    dist.destroy_process_group()
    return 0 if found["ok"] else 1


# ---- summary -------------------------------------------------------------------------------------
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected)")


def pytest_counts(log: str) -> dict:
    """The counts of pytest's last summary line ("2 passed, 1 skipped in 3.1s")."""
    lines = [line for line in log.splitlines() if PYTEST_COUNT.search(line)]
    if not lines:
        return {}
    return {word: int(n) for n, word in PYTEST_COUNT.findall(lines[-1])}


def read_parts(folder: str) -> dict:
    """Each part's status file ({"status", "rc", "seconds"}), its log's tail and its record."""
    parts = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".status.json"):
            continue
        part = name[: -len(".status.json")]
        with open(os.path.join(folder, name)) as f:
            entry = json.load(f)
        log = os.path.join(folder, f"{part}.log")
        text = open(log, errors="replace").read() if os.path.isfile(log) else ""
        entry["log_tail"] = text[-2000:]
        if part == "cuda_tests":
            entry["tests"] = pytest_counts(text)
        record = os.path.join(folder, f"{part}.json")
        if os.path.isfile(record):
            try:
                with open(record) as f:
                    entry["record"] = json.load(f)
            except json.JSONDecodeError as exc:
                entry["record_error"] = f"{record}: {exc}"
        parts[part] = entry
    return parts


def summary_table(parts: dict) -> str:
    """Markdown: one line per part, then one per trainer row."""
    lines = ["| part | status | seconds | detail |", "|---|---|---|---|"]
    for name, p in parts.items():
        detail = ""
        if name == "cuda_tests":
            detail = ", ".join(f"{n} {k}" for k, n in p.get("tests", {}).items())
        elif name == "ddp" and "record" in p:
            r = p["record"]
            detail = f"{r['backend']} x {r['world']}, collectives ok {r['ok']}"
        elif name == "trainers" and "record" in p:
            rows = p["record"]["rows"]
            detail = f"{sum(r['ok'] for r in rows)} of {len(rows)} trainer rows ok"
        elif name == "benchmark" and "record" in p:
            detail = f"{len(p['record'].get('rows', []))} named rows"
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} | {detail} |")
    rows = parts.get("trainers", {}).get("record", {}).get("rows", [])
    if rows:
        lines += [
            "",
            "| trainer | prec | train ms/image | eval ms/image | peak MB | ok |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            ok = "ok" if r["ok"] else f"FAILED {r.get('error', '')}"[:80]
            lines.append(
                f"| {r['trainer']} | {r['prec']} | {r.get('train_ms_per_image', '-')} | "
                f"{r.get('eval_ms_per_image', '-')} | {r.get('peak_mb', '-')} | {ok} |"
            )
    return "\n".join(lines) + "\n"


def run_summary(args) -> int:
    parts = read_parts(args.folder)
    record = {
        "machine": _machine(),
        "ok": all(p["status"] in ("passed", "skipped") for p in parts.values()),
        "parts": parts,
    }
    write_json(os.path.join(args.folder, "gpu_check.json"), record)
    table = summary_table(parts)
    atomic_write(os.path.join(args.folder, "gpu_check.md"), lambda f: f.write(table))
    print(table, end="")
    return 0 if record["ok"] else 1


def _machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    }


def build_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    t = sub.add_parser("trainers", help="one training step and one evaluation per trainer")
    t.add_argument("--out", required=True, help="the JSON record, rewritten after every row")
    t.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    t.add_argument("--size", default="vit_b16", help="tools/benchmark.py's CLIP size")
    t.add_argument("--precs", nargs="+", default=["fp16", "amp"], help="TRAINER.<KEY>.PREC")
    t.add_argument("--classes", type=int, default=10)
    t.add_argument("--images", type=int, default=4, help="images per step and per evaluation")
    t.add_argument("--trainers", nargs="*", default=[], help="default: every trainer module's")
    t.add_argument("--workdir", default="", help="keep the weights and data here")
    d = sub.add_parser("ddp", help="under torchrun: process group and collectives")
    d.add_argument("--out", required=True)
    d.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    s = sub.add_parser("summary", help="the parts' records in one JSON and a table")
    s.add_argument("folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    if getattr(args, "device", "") == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check {args.part}: --device cuda, but torch sees no CUDA device.")
    run = {"trainers": run_trainers, "ddp": run_ddp, "summary": run_summary}[args.part]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
