"""Packaging for sqr.

The config files are shipped inside the package at their paths in the repository:
``configs/`` as ``sqr/config/configs`` and ``projects/sqr/configs/`` as
``sqr/config/projects/sqr/configs``, so that ``sqr.model_zoo.get_config("common/train.py")``,
``sqr.model_zoo.get_config("sqr_dab_detr_r50_50ep.py")`` and the configs' relative imports work
from a wheel as well as from a source checkout (where they read the repository's folders).

The tools are installed as commands (``sqr-train``, ...; see :mod:`sqr.tools`).
"""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


# Repository folders of config files, copied to the same relative paths under sqr/config.
CONFIG_DIRS = ("configs", os.path.join("projects", "sqr", "configs"))
TOOLS = {  # command -> module in sqr.tools, one per tools/<module>.py script
    "sqr-train": "train_net",
    "sqr-benchmark": "benchmark",
    "sqr-convert": "convert_checkpoint",
    "sqr-analyze": "analyze_stages",
    "sqr-visualize": "visualize",
    "sqr-plot": "plot_metrics",
    "sqr-demo": "demo",
    "sqr-analyze-model": "analyze_model",
    "sqr-gpu-check": "gpu_check",
    "sqr-export": "export_model",
}


# sqr-export and Predictor(backend="onnxruntime"): write, check and run ONNX graphs.
DEPLOY = ["onnx>=1.16", "onnxruntime>=1.18"]


class BuildWithConfigs(build_py):
    """Copy the config folders (:data:`CONFIG_DIRS`) into the built package under ``sqr/config``."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            for folder in CONFIG_DIRS:
                target = os.path.join(self.build_lib, "sqr", "config", folder)
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(
                    os.path.join(HERE, folder),
                    target,
                    ignore=shutil.ignore_patterns("__pycache__"),
                )


setup(
    name="sqr",
    version="0.1.0",
    description="Selective Query Recollection for query-based object detectors",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sqr", "sqr.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "fvcore>=0.1.5",
        "omegaconf>=2.3",
        "pycocotools>=2.0.6",  # reading COCO jsons (sqr/data/coco.py)
        # COCO AP (sqr/evaluation); 1.8 is the version tests/evaluation proves equal to pycocotools.
        "faster-coco-eval>=1.8",
        "scipy>=1.9",
        "numpy>=1.23",
        "pillow>=9.0",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "tabulate>=0.9",
        # Only the figures of sqr-analyze, sqr-visualize, sqr-plot and sqr-demo use it, but those
        # are installed commands: as an extra they would be installed yet fail on first use.
        "matplotlib>=3.6",
    ],
    extras_require={
        "dev": [
            "pytest>=7.0",
            "pytest-timeout>=2.1",
            "tensorboard>=2.10",
            "ruff>=0.5",
            # tests/test_install.py builds the wheel offline (--no-build-isolation): the build
            # backend must be in the environment; 70.1 has bdist_wheel without the wheel package.
            "setuptools>=70.1",
            *DEPLOY,  # tests/export runs the exported graphs
        ],
        "tensorboard": ["tensorboard>=2.10"],
        "deploy": DEPLOY,
    },
    entry_points={
        "console_scripts": [f"{cmd} = sqr.tools.{mod}:invoke_main" for cmd, mod in TOOLS.items()]
    },
    cmdclass={"build_py": BuildWithConfigs},
)
