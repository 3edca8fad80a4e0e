# Training defaults shared by every experiment (detrex's configs/common/train.py keys).
train = dict(
    output_dir="./output",
    # Weights loaded before training (weights only). A path, an https:// URL,
    # detectron2://..., or sqr://NAME from sqr.model_zoo.
    init_checkpoint="",
    # Length of training: set exactly one. Epochs are converted to iterations with the dataset
    # size and the total batch size (the conversion is logged at start).
    max_iter=90000,
    max_epochs=None,
    # Total batch size the recipe's learning rate was tuned for; a warning is logged when the
    # run's total batch differs (DETR-style AdamW recipes do not scale lr linearly).
    reference_total_batch_size=None,
    amp=dict(enabled=False, dtype="bfloat16"),  # "float16" adds a grad scaler (CUDA only)
    ddp=dict(find_unused_parameters=False, broadcast_buffers=False),
    # BatchNorm statistics over all processes' images (torch.nn.SyncBatchNorm; GPUs only, a
    # CPU run warns and keeps per-process statistics). RT-DETR trains with it.
    sync_bn=False,
    clip_grad=dict(enabled=False, params=dict(max_norm=0.1, norm_type=2.0)),
    # An exponential moving average of the weights (sqr.engine.ModelEMA, RT-DETR's rule: decay
    # decay * (1 - exp(-updates / warmups)), one update per optimizer step). When enabled, the
    # evaluations during and after training and --eval-only use the average; checkpoints keep
    # the trained weights under "model" and the average under "ema".
    ema=dict(enabled=False, decay=0.9999, warmups=2000),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,
    log_period=20,
    # "auto": cuda when a GPU is visible, else cpu. --num-gpus N with cpu runs N gloo processes.
    device="auto",
    dist_timeout_minutes=30,
    seed=0,
    cudnn_benchmark=False,
    # torch.set_float32_matmul_precision on CUDA: "high" lets fp32 matmuls and convolutions use
    # TF32 tensor cores (several times faster on Ampere and later, 10-bit mantissa products);
    # "highest" is full fp32. Ignored on CPU.
    float32_matmul_precision="high",
    # torch.compile the model's forward in the trainer (sqr.engine.compile): False (eager), True
    # (inductor, torch.compile's defaults) or dict(backend=..., mode=..., dynamic=..., ...).
    compile=False,
)
