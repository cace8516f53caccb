"""Train or evaluate a CLIP prompt learner; the command line of CoOp's train.py, plus --host.

Merge order (as CoOp): defaults + trainer keys, dataset config, trainer config, CLI flags, trailing
KEY VALUE options. Set PROMPTDIFF_DEBUG=1 to see tracebacks instead of one-line errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from promptdiff.results.layout import MANIFEST, RESULTS_FILE, results_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument(
        "--resume", type=str, default="", help="checkpoint directory to resume from"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="only non-negative values enable a fixed seed"
    )
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument(
        "--dataset-config-file", type=str, default="", help="path to config file for dataset setup"
    )
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument(
        "--model-dir",
        type=str,
        default="",
        help="load model from this directory for eval-only mode",
    )
    parser.add_argument(
        "--load-epoch", type=int, help="load model weights at this epoch for evaluation"
    )
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument(
        "--same-run",
        action="store_true",
        help="only check: exit 0 if OUTPUT_DIR/results.json was written with these run-defining "
        "options, 3 (naming the differing keys) if not, 1 if there is none (scripts use it)",
    )
    parser.add_argument(
        "--host",
        choices=("builtin", "dassl"),
        default=None,
        help="Dassl API provider: the built-in engine (default) or an installed Dassl "
        "(same as PROMPTDIFF_HOST)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print no config dump and no progress bars, only warnings and one summary line "
        "(log.txt stays complete)",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="modify config options using the command-line",
    )
    return parser


def reset_cfg(cfg, args) -> None:
    """Apply the CLI flags (after the config files, before trailing options)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:  # upstream tests `if args.seed`, which drops seed 0
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def setup_cfg(args):
    """The run's frozen config from the parsed command line, in the module docstring's order."""
    from promptdiff.trainers.config import build_cfg

    files = (args.dataset_config_file, args.config_file)
    return build_cfg(files, args.opts or [], lambda cfg: reset_cfg(cfg, args))


def check_eval_args(args, trainer_class) -> None:
    """--eval-only on a trainer with learned prompts needs the trained model (--model-dir)."""
    from promptdiff.trainers.base import ClipPromptTrainer

    if args.eval_only and not args.model_dir and issubclass(trainer_class, ClipPromptTrainer):
        raise ValueError(
            f"--eval-only with trainer {trainer_class.__name__} needs --model-dir (the output "
            f"folder of its training run); without it the untrained prompts would be evaluated."
        )


def trainer_namespaces(cfg) -> tuple[str, ...] | None:
    """The TRAINER.<NS> blocks cfg's trainer reads (None: unknown trainer, compare all)."""
    import promptdiff.trainers  # noqa: F401  (registers the trainers)
    from promptdiff.host import TRAINER_REGISTRY

    if cfg.TRAINER.NAME not in TRAINER_REGISTRY.registered_names():
        return None
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME).config_namespaces()


def same_run(cfg) -> int:
    """--same-run: compare OUTPUT_DIR/results.json's recorded run config with `cfg`."""
    from promptdiff.engine.runinfo import differences, run_config, summarize

    path = os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    try:
        with open(path) as f:
            saved = json.load(f).get("run_config")
    except (OSError, ValueError):
        print(f"No readable results in {path}.", file=sys.stderr)
        return 1
    diffs = differences(saved or {}, run_config(cfg), namespaces=trainer_namespaces(cfg))
    if diffs:
        print(
            f"error: {cfg.OUTPUT_DIR} holds the results of a run with other options "
            f"({summarize(diffs)}); choose another OUTPUT (or CFG) for these options, or remove "
            f"that folder to replace it.",
            file=sys.stderr,
        )
        return 3
    return 0


def check_eval_output(cfg) -> None:
    """Refuse an --eval-only run whose results would replace a training run's record or the
    results of a run with other run-defining options (README, Crash safety and run identity)."""
    from promptdiff.engine.checkpoint import has_checkpoint
    from promptdiff.engine.runinfo import differences, run_record, summarize

    out = cfg.OUTPUT_DIR
    path = os.path.join(out, results_file(cfg.TEST.SPLIT))
    trained = [
        name for name in (MANIFEST, "config.yaml") if os.path.isfile(os.path.join(out, name))
    ]
    if trained or has_checkpoint(out):
        what = trained[0] if trained else "checkpoints"
        raise RuntimeError(
            f"Output folder {out} holds a training run ({what}); an evaluation there would "
            f"replace its {os.path.basename(path)}: pass another --output-dir for the evaluation."
        )
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # nothing (readable) to replace
    mine = run_record(cfg)
    theirs = saved.get("fingerprint") if isinstance(saved, dict) else None
    if theirs and theirs != mine["fingerprint"]:
        recorded = saved.get("run_config") or {}
        diffs = differences(recorded, mine["config"], namespaces=trainer_namespaces(cfg))
        if not diffs and differences(recorded, mine["config"]):
            return  # only another trainer's TRAINER.<NS> options differ
        why = summarize(diffs) if diffs else f"fingerprint {theirs}, this run {mine['fingerprint']}"
        raise RuntimeError(
            f"{path} holds the results of a run with other options ({why}); evaluate into "
            f"another --output-dir, or delete that file to replace it."
        )


def main(args) -> int:
    if args.same_run:
        return same_run(setup_cfg(args))

    import promptdiff.datasets  # noqa: F401  (registers the datasets)
    import promptdiff.trainers  # noqa: F401  (registers the trainers)
    from promptdiff.engine.checkpoint import has_checkpoint
    from promptdiff.engine.distributed import (
        init_distributed,
        is_main_process,
        launched_by_torchrun,
    )
    from promptdiff.engine.utils import lock_output_dir, remove_stale_tmp, unlock_output_dir
    from promptdiff.host import (
        DATASET_REGISTRY,
        HOST,
        TRAINER_REGISTRY,
        log,
        setup_logger,
    )

    cfg = setup_cfg(args)
    if cfg.TRAINER.NAME not in TRAINER_REGISTRY.registered_names():
        raise KeyError(
            f"Unknown trainer {cfg.TRAINER.NAME!r} (--trainer); registered trainers: "
            f"{', '.join(TRAINER_REGISTRY.registered_names())}."
        )
    if cfg.DATASET.NAME not in DATASET_REGISTRY.registered_names():
        raise KeyError(
            f"Unknown dataset {cfg.DATASET.NAME!r} (DATASET.NAME); registered datasets: "
            f"{', '.join(DATASET_REGISTRY.registered_names())}."
        )
    check_eval_args(args, TRAINER_REGISTRY.get(cfg.TRAINER.NAME))
    if launched_by_torchrun():
        if HOST != "builtin":
            raise ValueError(
                "Multi-GPU runs (torchrun) need the built-in engine; drop --host dassl "
                "(or PROMPTDIFF_HOST=dassl)."
            )
        init_distributed(cfg.USE_CUDA)
    # under torchrun only rank 0 writes (and locks) the output folder and log.txt; the other
    # ranks print warnings and errors only
    main_rank = is_main_process()
    output = cfg.OUTPUT_DIR if main_rank else None
    # one run per output folder; what a killed run left half-written goes before anything else
    lock = lock_output_dir(output) if output else None
    try:
        if output and args.eval_only:
            check_eval_output(cfg)
        stale = remove_stale_tmp(output) if output else []
        if HOST == "builtin":
            # a restarted training run continues its log.txt
            resuming = bool(output) and not args.eval_only and has_checkpoint(cfg.RESUME or output)
            setup_logger(output, quiet=args.quiet or not main_rank, append=resuming)
        else:  # Dassl tees stdout into log.txt, so under it --quiet only drops the config dump
            setup_logger(output)
        if stale:
            log(f"Removed {len(stale)} temporary file(s) an interrupted run left in {output}")
        try:
            run(cfg, args)
        except KeyboardInterrupt as exc:
            name = str(exc) or "SIGINT"
            raise Interrupted(interrupted_message(cfg, args, name), name) from None
    finally:
        if lock:
            unlock_output_dir(lock)
    return 0


def run(cfg, args) -> None:
    """Log the setup, build the trainer, then train or evaluate."""
    import torch

    from promptdiff.engine.distributed import is_main_process
    from promptdiff.host import HOST, build_trainer, collect_env_info, log, set_random_seed

    if cfg.SEED >= 0:
        log(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    if not (args.quiet and HOST == "dassl"):
        log("***************\n** Arguments **\n***************")
        for key in sorted(vars(args)):
            log(f"{key}: {vars(args)[key]}")
        log("************\n** Config **\n************")
        log(str(cfg))
        log("Collecting env info ...")
        log(f"** System info **\n{collect_env_info()}\n")

    results = os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    before = os.path.getmtime(results) if os.path.isfile(results) else None
    trainer = build_trainer(cfg)
    if args.eval_only:
        # the built-in engine also refuses a model trained with other options
        check = {"check_run": True} if HOST == "builtin" else {}
        trainer.load_model(args.model_dir, epoch=args.load_epoch, **check)
        trainer.test()
    elif not args.no_train:
        if cfg.OUTPUT_DIR and is_main_process():
            write_run_config(cfg)
        trainer.train()
    if args.quiet and is_main_process():
        print(run_summary(cfg, args, before), flush=True)


def write_run_config(cfg) -> None:
    """OUTPUT_DIR/config.yaml: the merged config of a training run (promptdiff.load reads it)."""
    from promptdiff.engine.utils import atomic_write

    atomic_write(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), lambda f: f.write(cfg.dump()))


def run_summary(cfg, args, results_mtime: float | None) -> str:
    """The one line --quiet prints per run: what ran, its accuracy, where it went."""
    what = "eval" if args.eval_only else "train"
    head = (
        f"{cfg.TRAINER.NAME} {cfg.DATASET.NAME} {cfg.DATASET.SUBSAMPLE_CLASSES} "
        f"shots {cfg.DATASET.NUM_SHOTS} seed {cfg.SEED} {what}"
    )
    path = os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    result = "no test result"
    # a results.json this run did not rewrite belongs to an earlier run
    if os.path.isfile(path) and os.path.getmtime(path) != results_mtime:
        with open(path) as f:
            res = json.load(f)
        result = f"{res['split']} accuracy {res['accuracy']:.2f}% ({res['correct']}/{res['total']})"
    return f"{head}: {result} -> {cfg.OUTPUT_DIR or '.'}"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run; its message says what was kept and how to go on."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


def _terminated(signum: int, frame) -> None:
    # SIGTERM (a scheduler's kill, `kill PID`) unwinds like Ctrl-C: the lock is released and
    # the same one line is printed
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupted_message(cfg, args, name: str) -> str:
    """What an interrupted run kept and that rerunning the same command goes on from there."""
    from promptdiff.results.layout import RunDamaged, read_manifest

    how = f"Interrupted ({name})"
    if args.eval_only:
        return (
            f"{how} during the evaluation, before its results were written; run the same "
            f"command again."
        )
    directory = cfg.RESUME or cfg.OUTPUT_DIR
    try:
        manifest = read_manifest(directory) or {}
    except RunDamaged:
        manifest = {}
    last = manifest.get("last")
    if not last:
        return (
            f"{how} before the first checkpoint was saved in {directory}; running the same "
            f"command again starts training from the beginning."
        )
    epoch = manifest["units"][last]["epoch"]
    return (
        f"{how}; the last complete checkpoint is {last} (epoch {epoch}) in {directory}, and "
        f"running the same command again resumes from it."
    )


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.host:
        os.environ["PROMPTDIFF_HOST"] = args.host
    from promptdiff.engine.utils import USER_ERRORS, report_error

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return main(args)
    except USER_ERRORS as exc:
        return report_error(exc)
    except KeyboardInterrupt as exc:
        if os.environ.get("PROMPTDIFF_DEBUG"):
            raise
        if not isinstance(exc, Interrupted):  # before main() knew what it would write
            name = str(exc) or "SIGINT"
            exc = Interrupted(
                f"Interrupted ({name}) before the run started; nothing was written.", name
            )
        print(f"error: {exc}", file=sys.stderr)
        return 128 + signal.Signals[exc.signal_name]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        from promptdiff.engine.distributed import cleanup_distributed

        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(cli())
