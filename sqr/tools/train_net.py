"""Train or evaluate a detector described by a LazyConfig file.

    python tools/train_net.py --config-file projects/sqr/configs/X.py --num-gpus 8
    python tools/train_net.py --config-file X.py --eval-only train.init_checkpoint=model.pth
    python tools/train_net.py --config-file X.py --resume          # continue in train.output_dir
    python tools/train_net.py --config-file X.py --num-gpus 2 train.device=cpu   # 2 gloo processes
    sqr-train --config-file quickstart/sqr_dab_detr_synthetic.py   # installed; config by name

``--config-file`` is a path, or the name of a config under ``projects/sqr/configs`` (see
:func:`sqr.engine.resolve_config_file`), which an installed package ships.

The output directory follows detectron2: config.yaml, log.txt, metrics.json, TensorBoard events,
model_XXXXXXX.pth, model_final.pth, last_checkpoint, inference/ (and eval_results.json).

With ``train.ema.enabled`` every evaluation (periodic, final, ``--eval-only``) is of the moving
average of the weights; checkpoints hold the trained weights under ``"model"`` and the average
under ``"ema"`` (``{"module": state_dict, "updates": count}``), which ``--resume`` restores.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from typing import TYPE_CHECKING

from sqr.config import instantiate
from sqr.utils.cli import default_argument_parser
from sqr.utils.file_io import write_json

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

# Everything that imports torch is imported inside the functions, so that --help (parsed before
# any of them runs) answers without loading it.

logger = logging.getLogger("sqr.train_net")


def do_test(cfg: DictConfig, model: torch.nn.Module) -> dict:
    """Run the test loader through the evaluator; ``{}`` when the config has no evaluator."""
    from torch.nn.parallel import DistributedDataParallel

    from sqr.evaluation import inference_on_dataset

    if "evaluator" not in cfg.dataloader:
        return {}
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )


def max_iterations(cfg: DictConfig, loader) -> int:
    """``train.max_iter``, or ``train.max_epochs`` converted with the dataset and batch size."""
    max_iter, max_epochs = cfg.train.get("max_iter"), cfg.train.get("max_epochs")
    if (max_iter is None) == (max_epochs is None):
        raise ValueError(
            "set exactly one of train.max_iter and train.max_epochs "
            f"(got max_iter={max_iter}, max_epochs={max_epochs})"
        )
    total_batch = loader.batch_sampler.total_batch_size
    per_epoch = math.ceil(len(loader.dataset) / total_batch)
    logger.info(
        "%d training images, total batch %d: %d iterations per epoch",
        len(loader.dataset),
        total_batch,
        per_epoch,
    )
    reference = cfg.train.get("reference_total_batch_size")
    if reference and reference != total_batch:
        logger.warning(
            "total batch %d differs from the recipe's %d; the learning rate is not rescaled",
            total_batch,
            reference,
        )
    return max_iter if max_iter is not None else max_epochs * per_epoch


def _build_ema(cfg: DictConfig, model: torch.nn.Module, extra: dict, *, resuming: bool):
    """The run's :class:`~sqr.engine.ModelEMA`, started from the loaded weights, or on
    ``--resume`` restored from the checkpoint's ``"ema"`` entry."""
    from sqr.engine import ModelEMA

    ema = ModelEMA(model, decay=cfg.train.ema.decay, warmups=cfg.train.ema.warmups)
    if resuming and "ema" in extra:
        ema.load_state_dict(extra.pop("ema"))
        logger.info("Resuming the EMA at update %d", ema.updates)
    elif resuming:
        logger.warning(
            "train.ema.enabled, but the checkpoint has no EMA state: the average starts from "
            "the resumed weights at update 0"
        )
    return ema


def _optimizer_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each param group's hyperparameters but its lr (which the scheduler sets)."""
    return [
        {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
        for group in optimizer.param_groups
    ]


def _apply_optimizer_settings(optimizer: torch.optim.Optimizer, configured: list[dict]) -> None:
    """After a resume: the optimizer's loaded state brought back the checkpoint's settings
    (weight decay, betas, ...); those of the config win, and each difference is logged."""
    for index, (group, settings) in enumerate(zip(optimizer.param_groups, configured, strict=True)):
        for key, value in settings.items():
            if group.get(key) != value:
                logger.warning(
                    "Resuming with other optimizer settings: param group %d has %s %s in the "
                    "checkpoint, %s in the config; the config's apply",
                    index,
                    key,
                    group.get(key),
                    value,
                )
                group[key] = value


def do_train(cfg: DictConfig, args, model: torch.nn.Module) -> None:
    """Train ``model`` in place, resuming from ``train.output_dir`` with ``--resume``."""
    from torch.nn.parallel import DistributedDataParallel

    from sqr.engine import (
        CheckpointHook,
        DetectionCheckpointer,
        EMAHook,
        EvalHook,
        IterationTimer,
        LRMultiplier,
        LRSchedulerHook,
        PeriodicWriter,
        Trainer,
        check_num_classes,
        check_train_options,
        restore_rng_state,
    )
    from sqr.engine.compile import compile_options
    from sqr.engine.defaults import (
        check_dataset_images,
        check_optimizer_options,
        save_config_record,
        with_sync_batch_norm,
    )
    from sqr.utils import comm
    from sqr.utils.events import CommonMetricPrinter, JSONWriter, TensorboardWriter

    check_train_options(cfg.train)
    check_optimizer_options(cfg)
    check_num_classes(model, cfg.dataloader.train.dataset)
    check_dataset_images(cfg.dataloader.train.dataset, "dataloader.train.dataset")
    if "evaluator" in cfg.dataloader:  # evaluated during or after training: check it now
        check_dataset_images(cfg.dataloader.test.dataset, "dataloader.test.dataset")
    record = copy.deepcopy(cfg)  # the config as given, written once the run goes ahead
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    max_iter = max_iterations(cfg, train_loader)
    if cfg.train.get("sync_bn", False):
        model = with_sync_batch_norm(model, cfg.train.device, comm.get_world_size())
    if comm.get_world_size() > 1:
        device_ids = [comm.get_local_rank()] if cfg.train.device == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids, **cfg.train.ddp)
    scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), max_iter)
    clip = cfg.train.clip_grad
    trainer = Trainer(
        model,
        train_loader,
        optimizer,
        amp_dtype=cfg.train.amp.dtype if cfg.train.amp.enabled else None,
        clip_grad_max_norm=clip.params.max_norm if clip.enabled else None,
        clip_grad_norm_type=clip.params.norm_type,
        log_period=cfg.train.log_period,
        compile_options=compile_options(cfg.train.get("compile", False)),
    )
    checkpointer = DetectionCheckpointer(
        model,
        cfg.train.output_dir,
        save_to_disk=comm.is_main_process(),
        optimizer=optimizer,
        scheduler=scheduler,
        trainer=trainer,
    )
    configured = _optimizer_settings(optimizer)
    extra = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    resuming = checkpointer.resumed_from is not None
    start_iter = extra.get("iteration", -1) + 1 if resuming else 0
    if resuming:
        if start_iter >= max_iter:
            raise ValueError(
                f"--resume: {checkpointer.resumed_from} ends at iteration {start_iter}, and "
                f"train.max_iter is {max_iter}: nothing left to train (raise train.max_iter to "
                "train longer)"
            )
        _apply_optimizer_settings(optimizer, configured)
        rng = extra.get("rng")
        if rng is not None and len(rng) == comm.get_world_size():
            restore_rng_state(rng[comm.get_rank()])
        else:
            logger.warning("checkpoint has no RNG state for this world size; keeping fresh seeds")
    from sqr.engine import ema_enabled

    ema = None
    if ema_enabled(cfg):
        ema = _build_ema(cfg, checkpointer.model, extra, resuming=resuming)
        checkpointer.add_checkpointable("ema", ema)
    elif resuming and "ema" in extra:
        logger.info("train.ema is disabled: the checkpoint's EMA state is not used")
    train_loader.batch_sampler.start_iter = start_iter
    if comm.is_main_process() and cfg.train.output_dir:
        save_config_record(record, cfg.train.output_dir, kind="resume" if resuming else "train")

    writers = []
    if comm.is_main_process():
        writers = [
            CommonMetricPrinter(max_iter),
            JSONWriter(os.path.join(cfg.train.output_dir, "metrics.json")),
        ]
        try:
            writers.append(TensorboardWriter(cfg.train.output_dir))
        except ImportError:
            logger.info("tensorboard is not installed: no TensorBoard events are written")
    evaluated = ema.module if ema is not None else model
    trainer.register_hooks(
        [
            IterationTimer(),
            EMAHook(ema) if ema is not None else None,  # before EvalHook, which reads it
            LRSchedulerHook(optimizer, scheduler),
            CheckpointHook(
                checkpointer,
                cfg.train.checkpointer.period,
                max_iter,
                cfg.train.checkpointer.max_to_keep,
            ),
            EvalHook(cfg.train.eval_period, lambda: do_test(cfg, evaluated)),
            PeriodicWriter(writers, cfg.train.log_period) if comm.is_main_process() else None,
        ]
    )
    trainer.train(start_iter, max_iter)


def do_eval_only(cfg: DictConfig, args, model: torch.nn.Module) -> dict:
    """Load ``train.init_checkpoint`` (its EMA weights with ``train.ema.enabled``), evaluate, and
    write ``eval_results.json``."""
    from sqr.engine import load_trained_weights, trained_weights
    from sqr.engine.defaults import save_config_record
    from sqr.utils import comm

    path = cfg.train.init_checkpoint
    weights = trained_weights(cfg)
    load_trained_weights(model, path, purpose="--eval-only", weights=weights)
    if comm.is_main_process() and cfg.train.output_dir:
        save_config_record(cfg, cfg.train.output_dir, kind="eval")
    results = do_test(cfg, model)
    if comm.is_main_process() and cfg.train.output_dir:
        record = {
            "results": results,
            "checkpoint": path,
            "weights": weights,
            "config_file": args.config_file,
            "world_size": comm.get_world_size(),
        }
        path = os.path.join(cfg.train.output_dir, "eval_results.json")
        write_json(path, record, indent=2)
    return results


def setup(args) -> DictConfig:
    from sqr.engine import default_setup, load_config

    cfg = load_config(args)
    # The config record is written once the run goes ahead (a refused --resume must not
    # overwrite it): by do_train or do_eval_only.
    default_setup(cfg, args, save_config=False)
    return cfg


def main(args) -> dict | None:
    cfg = setup(args)
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info("Model:\n%s", model)
    if args.eval_only:
        return do_eval_only(cfg, args, model)
    do_train(cfg, args, model)
    return None


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    from sqr.engine import launch_main

    launch_main(main, args)


if __name__ == "__main__":
    invoke_main()
