"""Packaging for sqr.

The shared config files under ``configs/`` are shipped inside the package as
``sqr/config/configs`` so that ``sqr.config.get_config("common/train.py")`` works from a
wheel as well as from a source checkout (where it reads ``configs/`` directly).
"""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithConfigs(build_py):
    """Copy ``configs/`` into the built package next to ``sqr/config``."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            target = os.path.join(self.build_lib, "sqr", "config", "configs")
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(
                os.path.join(HERE, "configs"),
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
        "iopath>=0.1.9",
        "omegaconf>=2.3",
        "pycocotools>=2.0.6",
        "scipy>=1.9",
        "numpy>=1.23",
        "pillow>=9.0",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "tabulate>=0.9",
        "matplotlib>=3.6",  # figures of tools/analyze_stages.py, visualize.py, plot_metrics.py
    ],
    extras_require={
        "dev": ["pytest>=7.0", "pytest-timeout>=2.1", "tensorboard>=2.10", "ruff>=0.5"],
        "tensorboard": ["tensorboard>=2.10"],
    },
    cmdclass={"build_py": BuildWithConfigs},
)
