"""The pieces every tool shares: command-line parser, config loading, launch and per-run setup."""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sqr.config import LazyConfig
from sqr.data.catalog import get_metadata
from sqr.model_zoo import get_config_file
from sqr.utils import comm
from sqr.utils.cli import default_argument_parser as default_argument_parser  # re-exported
from sqr.utils.env import collect_env_info, keep_freed_memory, seed_all_rng
from sqr.utils.file_io import remove_stale_temporaries
from sqr.utils.logger import setup_logger

from .launch import launch

logger = logging.getLogger(__name__)


def default_setup(cfg: DictConfig, args: argparse.Namespace, *, save_config: bool = True) -> None:
    """Output directory, logging, environment report, ``config.yaml`` and seeding.

    Args:
        cfg: the full config (``cfg.train.output_dir``, ``cfg.train.seed`` are read).
        args: parsed command line.
        save_config: write ``config.yaml`` now; train_net writes its record itself, once the
            run is known to go ahead (:func:`save_config_record`).
    """
    output_dir = cfg.train.output_dir
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, rank)
    if comm.is_main_process() and output_dir:
        remove_stale_temporaries(output_dir)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line: %s", " ".join(sys.argv))
    logger.info("Arguments: %s", args)
    if getattr(args, "config_file", ""):
        path = resolve_config_file(args.config_file)
        with open(path, encoding="utf-8") as f:
            logger.info("Contents of %s:\n%s", path, f.read())
    if save_config and comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        LazyConfig.save(cfg, path)
        logger.info("Full config saved to %s", path)
    seed = cfg.train.get("seed", -1)
    # Each rank draws a different stream; the data pipeline seeds every sample from train.seed.
    used = seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    logger.info("Using seed %d for rank %d", used, rank)
    torch.backends.cudnn.benchmark = bool(cfg.train.get("cudnn_benchmark", False))
    if cfg.train.device.startswith("cuda"):
        precision = cfg.train.get("float32_matmul_precision", "high")
        if precision not in ("highest", "high", "medium"):
            raise ValueError(
                "train.float32_matmul_precision must be 'highest', 'high' or 'medium', got "
                f"{precision!r}"
            )
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = precision != "highest"
    if cfg.train.device == "cpu":
        # The README's measured CPU speed-up, without an environment variable to remember.
        keep_freed_memory()
        if comm.get_world_size() == 1:  # launched ranks already share the cores
            warn_if_cpu_oversubscribed()


def warn_if_cpu_oversubscribed() -> bool:
    """Warn when this process's intra-op threads meet a machine that is already busy.

    torch starts one thread per core; when other processes already keep every core busy, those
    threads wait for each other at every parallel op (measured on 2 shared cores, load average
    5-7: 5.42 s/it for the quickstart with 2 threads, 0.71 s/it with one). The thread count is
    not changed here, so that a run's numerics never depend on the machine's load:
    ``OMP_NUM_THREADS`` decides, and when it is set nothing is checked.

    Returns:
        Whether it warned.
    """
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    if threads <= 1 or load < (cores or 1):
        return False
    logger.warning(
        "The machine is busy (1-minute load average %.1f on %d cores) and torch uses %d threads "
        "in this process: under such load one thread can be several times faster (measured: "
        "7.6x on 2 shared cores). Set OMP_NUM_THREADS=1 (or a small number) to try it.",
        load,
        cores,
        threads,
    )
    return True


_RESUME_RECORD = re.compile(r"config\.resume(\d+)\.yaml")


def save_config_record(cfg: DictConfig, output_dir: str, *, kind: str) -> str:
    """Write the config of a run into its output directory without overwriting an earlier
    run's record.

    Args:
        cfg: the config as loaded, overrides applied (before any object was put into it).
        output_dir: the run's directory.
        kind: "train" (a run that starts at iteration 0: ``config.yaml``), "resume" (the N-th
            resumed run: ``config.resumeN.yaml``, or ``config.yaml`` when there is none yet)
            or "eval" (``--eval-only``: ``config.eval.yaml``, next to ``eval_results.json``).

    Returns:
        The path written.
    """
    if kind not in ("train", "resume", "eval"):
        raise ValueError(f"kind must be 'train', 'resume' or 'eval', got {kind!r}")
    name = "config.eval.yaml" if kind == "eval" else "config.yaml"
    if kind == "resume" and os.path.exists(os.path.join(output_dir, name)):
        numbers = [int(m[1]) for f in os.listdir(output_dir) if (m := _RESUME_RECORD.fullmatch(f))]
        name = f"config.resume{max(numbers, default=0) + 1}.yaml"
    path = os.path.join(output_dir, name)
    LazyConfig.save(cfg, path)
    logger.info("Full config saved to %s", path)
    return path


def resolve_device(name: str) -> str:
    """``train.device`` as a torch device name: "auto" is "cuda" when CUDA is visible, else
    "cpu"; any other name is kept."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_config_file(config_file: str) -> str:
    """The file that ``--config-file`` names: an existing path, else an experiment config name.

    Args:
        config_file: a path, or a name under ``projects/sqr/configs`` such as
            ``"quickstart/sqr_dab_detr_synthetic.py"`` (:func:`sqr.model_zoo.get_config_file`),
            which also works where only the installed package is.

    Returns:
        ``config_file`` itself when it is a file, else the experiment config's path.

    Raises:
        FileNotFoundError: neither; the message names the path and the roots it tried.
    """
    if os.path.isfile(config_file):
        return config_file
    try:
        return get_config_file(config_file)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"--config-file {config_file!r} is neither a file ({os.path.abspath(config_file)} "
            f"does not exist) nor a config name: {e}"
        ) from None


def load_config(args: argparse.Namespace) -> DictConfig:
    """``--config-file`` (:func:`resolve_config_file`) with the command line's overrides applied
    and ``train.device`` resolved (:func:`resolve_device`)."""
    cfg = LazyConfig.load(resolve_config_file(args.config_file))
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    cfg.train.device = resolve_device(cfg.train.device)
    return cfg


def launch_main(main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """Run ``main_func(args)`` on every process the command line asks for (``--num-gpus``,
    ``--num-machines``, ``--machine-rank``, ``--dist-url``), with the config's device and
    collective timeout (``train.dist_timeout_minutes``, 30 by default)."""
    cfg = load_config(args)
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=cfg.train.device,
        timeout=datetime.timedelta(minutes=cfg.train.get("dist_timeout_minutes", 30)),
        allow_oversubscribe=args.allow_oversubscribe,
    )


def _option(section: DictConfig, dotted: str) -> Any:
    value = section
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, DictConfig) else None
    return value


def check_train_options(train: DictConfig) -> None:
    """Refuse ``train.*`` values of the wrong type or range, naming the key and the value.

    The typed constructors check their own arguments too; this check runs first so that the
    message names the config key a user typed rather than a constructor argument.

    Raises:
        ValueError: a bad value (e.g. ``train.max_iter=-1``, ``train.checkpointer.period=0``).
    """

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks = [  # (key, may be None, minimum)
        ("max_iter", True, 1),
        ("max_epochs", True, 1),
        ("checkpointer.period", False, 1),
        ("checkpointer.max_to_keep", True, 1),
        ("eval_period", False, 0),
        ("log_period", False, 1),
    ]
    for key, optional, minimum in checks:
        value = _option(train, key)
        if value is None and optional:
            continue
        if not is_int(value) or value < minimum:
            kind = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"train.{key} must be a {kind} integer, got {value!r}")
    if _option(train, "ema.enabled"):
        decay, warmups = _option(train, "ema.decay"), _option(train, "ema.warmups")
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ValueError(f"train.ema.decay must be a number in [0, 1), got {decay!r}")
        if not is_int(warmups) or warmups < 1:
            raise ValueError(f"train.ema.warmups must be a positive integer, got {warmups!r}")
    if _option(train, "clip_grad.enabled"):
        max_norm = _option(train, "clip_grad.params.max_norm")
        if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or max_norm <= 0:
            raise ValueError(f"train.clip_grad.params.max_norm must be positive, got {max_norm!r}")


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_list_of(check: Callable[[Any], bool], length: int | None = None) -> Callable[[Any], bool]:
    def is_list(value: Any) -> bool:
        return (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and (length is None or len(value) == length)
            and all(check(item) for item in value)
        )

    return is_list


# Numeric keys of optimizers and schedules (torch.optim, get_default_optimizer_params, LRSchedule,
# fvcore schedulers), wherever they appear in optimizer.* or lr_multiplier.*.
_OPTIMIZER_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        key: (_is_number, "a non-negative number")
        for key in (
            "lr",
            "base_lr",
            "weight_decay",
            "weight_decay_norm",
            "momentum",
            "dampening",
            "eps",
            "warmup_factor",
            "warmup_length",
            "gamma",
            "start_value",
            "end_value",
        )
    },
    "weight_decay_bias": (lambda v: v is None or _is_number(v), "a non-negative number or None"),
    "warmup_iters": (_is_count, "a non-negative integer"),
    "num_updates": (lambda v: _is_count(v) and v > 0, "a positive integer"),
    "betas": (_is_list_of(_is_number, 2), "a list of 2 numbers"),
    "values": (_is_list_of(_is_number), "a list of non-negative numbers"),
    "milestones": (_is_list_of(_is_count), "a list of non-negative integers"),
}


def check_optimizer_options(cfg: DictConfig) -> None:
    """Refuse numeric ``optimizer.*`` and ``lr_multiplier.*`` values of the wrong type or range
    (``optimizer.lr=abc``, ``optimizer.lr=[1,2]``, ``lr_multiplier.warmup_iters=1.5``), naming
    the key and the value, before anything is built from them.

    Interpolations (``base_lr="${..lr}"``) are not checked themselves: the key they copy is.

    Raises:
        ValueError: the first bad value found.
    """

    def check(node: DictConfig, prefix: str) -> None:
        for key in node:
            if OmegaConf.is_interpolation(node, key):
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                check(value, f"{prefix}.{key}")
            elif key in _OPTIMIZER_CHECKS:
                is_valid, expected = _OPTIMIZER_CHECKS[key]
                if not is_valid(value):
                    # As typed on the command line: a list (OmegaConf may hold it as a tuple).
                    listed = isinstance(value, Sequence) and not isinstance(value, str)
                    shown = list(value) if listed else value
                    raise ValueError(f"{prefix}.{key} must be {expected}, got {shown!r}")

    for section in ("optimizer", "lr_multiplier"):
        if isinstance(cfg.get(section), DictConfig):
            check(cfg[section], section)


def check_dataset_images(dataset: Any, key: str) -> None:
    """Resolve a config's dataset and check that every image file it lists exists.

    Run before the first iteration, for the test dataset too: a typo in its name or a missing
    image would otherwise surface only in the evaluation after training. One ``stat`` per image
    (the records are cached, so the loaders do not read the annotations again).

    Args:
        dataset: ``dataloader.train.dataset`` or ``dataloader.test.dataset``: a registered
            name, names, or a list of records.
        key: the config key, for the messages.

    Raises:
        KeyError: a dataset name is not registered.
        FileNotFoundError: image files are missing; the first few are listed.
    """
    from sqr.data.catalog import load_dataset

    items = [dataset] if isinstance(dataset, str) else list(dataset)
    records = []
    for item in items:
        if not isinstance(item, str):
            records.append(item)
            continue
        try:
            records.extend(load_dataset(item)[0])
        except KeyError as e:
            raise KeyError(f"{key} {item!r}: {e.args[0]}") from None
    missing = [
        record["file_name"]
        for record in records
        if "file_name" in record and not os.path.isfile(record["file_name"])
    ]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{key} {dataset!r}: {len(missing)} of {len(records)} image files do not exist: "
            f"{', '.join(missing[:5])}{more}"
        )


def check_num_classes(model: torch.nn.Module, dataset: Any) -> None:
    """Compare ``model.num_classes`` with the classes of the training datasets.

    Fewer classes than the data is an error (labels past the classifier would fail deep in the
    loss); more is a warning (the extra classes are only ever negatives).

    Args:
        model: the detector; a model without ``num_classes`` is not checked.
        dataset: ``dataloader.train.dataset``: a registered name, names, or a list of records.

    Raises:
        ValueError: the model has fewer classes than a dataset.
    """
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        return
    if isinstance(dataset, str):
        dataset = [dataset]
    names = [d for d in dataset if isinstance(d, str)]
    for name in names:
        classes = get_metadata(name).num_classes
        if num_classes < classes:
            raise ValueError(
                f"model.num_classes={num_classes} is smaller than the {classes} classes of "
                f"dataset {name!r}; set model.num_classes={classes}"
            )
        if num_classes > classes:
            logger.warning(
                "model.num_classes=%d is larger than the %d classes of dataset %r; the extra "
                "classes are never positive",
                num_classes,
                classes,
                name,
            )


def with_sync_batch_norm(model: torch.nn.Module, device: str, world_size: int) -> torch.nn.Module:
    """``model`` with every BatchNorm converted to :class:`torch.nn.SyncBatchNorm` (statistics
    over the whole batch of all processes, RT-DETR's ``sync_bn``) for a multi-GPU run.

    Frozen norms (FrozenBatchNorm2d) are not BatchNorms and stay as they are. The parameters
    and buffers are the same tensors, so an optimizer built before still steps them.

    Args:
        model: the model before DistributedDataParallel wraps it.
        device: ``train.device``; SyncBatchNorm runs on GPUs only, so a CPU (gloo) run keeps
            per-process statistics and says so.
        world_size: processes of the run; one process has nothing to synchronise.
    """
    if world_size <= 1:
        return model
    if device != "cuda":
        logger.warning(
            "train.sync_bn=True is ignored on %s: SyncBatchNorm runs on GPUs only, so each of "
            "the %d processes normalises with its own batch statistics",
            device,
            world_size,
        )
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
