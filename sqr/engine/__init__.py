"""Training engine: command line, launch, setup, trainer and hooks, checkpoints."""

from .checkpoint import (
    CheckpointFileError,
    DetectionCheckpointer,
    IncompatibleCheckpointError,
    LoadReport,
    UnsafeCheckpointError,
    load_trained_weights,
)
from .defaults import (
    check_num_classes,
    check_train_options,
    default_argument_parser,
    default_setup,
    launch_main,
    load_config,
    resolve_config_file,
    resolve_device,
)
from .ema import ModelEMA, ema_enabled, trained_weights
from .hooks import (
    CheckpointHook,
    EMAHook,
    EvalHook,
    IterationTimer,
    LRSchedulerHook,
    PeriodicWriter,
    capture_rng_state,
    restore_rng_state,
)
from .launch import launch
from .lr_scheduler import LRMultiplier, LRSchedule
from .predictor import Predictor
from .train_loop import HookBase, Trainer

__all__ = [
    "CheckpointFileError",
    "CheckpointHook",
    "DetectionCheckpointer",
    "EMAHook",
    "EvalHook",
    "HookBase",
    "IncompatibleCheckpointError",
    "IterationTimer",
    "LRMultiplier",
    "LRSchedule",
    "LRSchedulerHook",
    "LoadReport",
    "ModelEMA",
    "ema_enabled",
    "trained_weights",
    "PeriodicWriter",
    "Predictor",
    "Trainer",
    "UnsafeCheckpointError",
    "capture_rng_state",
    "check_num_classes",
    "check_train_options",
    "default_argument_parser",
    "default_setup",
    "launch",
    "launch_main",
    "load_config",
    "load_trained_weights",
    "resolve_config_file",
    "resolve_device",
    "restore_rng_state",
]
