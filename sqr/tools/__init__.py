"""Command-line tools, installed as ``sqr-*`` commands.

One command per tool, each mapped one to one to a module here and to its ``tools/<name>.py``
wrapper in a checkout (``sqr-train`` is ``python tools/train_net.py``):

* ``sqr-train`` (:mod:`~sqr.tools.train_net`): train, or evaluate with ``--eval-only``;
* ``sqr-benchmark`` (:mod:`~sqr.tools.benchmark`): time and memory of SQR against a baseline;
* ``sqr-convert`` (:mod:`~sqr.tools.convert_checkpoint`): other codebases' checkpoints to sqr's;
* ``sqr-analyze`` (:mod:`~sqr.tools.analyze_stages`): per-stage AP, TP fading, FP exacerbation;
* ``sqr-visualize`` (:mod:`~sqr.tools.visualize`): draw each decoder stage's predictions;
* ``sqr-plot`` (:mod:`~sqr.tools.plot_metrics`): training curves from ``metrics.json``;
* ``sqr-demo`` (:mod:`~sqr.tools.demo`): run a trained model on images;
* ``sqr-analyze-model`` (:mod:`~sqr.tools.analyze_model`): parameters and FLOPs per module.
* ``sqr-gpu-check`` (:mod:`~sqr.tools.gpu_check`): equivalence, precision, sync and speed checks
  on a GPU, as a markdown report.
* ``sqr-export`` (:mod:`~sqr.tools.export_model`): a trained model as ONNX or torch.export,
  checked against eager PyTorch.

Separate commands rather than one ``sqr`` command with subcommands: each keeps its own parser,
so ``--help``, detectron2's flags (``--config-file``, ``--num-gpus``, ``--eval-only``, ...) and
the ``key=value`` overrides read exactly as in the scripts and in detectron2's documentation.

Each module exposes ``main`` and ``invoke_main`` (the command's entry point). This package imports
none of them, so that a command loads only its own tool.
"""
