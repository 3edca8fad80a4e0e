"""A regular (non-editable) install works on its own: commands, configs by name, training.

Builds the wheel from a copy of the checkout, installs it into a fresh virtual environment and
runs it from a directory far from the checkout, so that nothing can come from the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from sqr.data.synthetic import DIRNAME, generate_synthetic_shapes

REPO = Path(__file__).resolve().parents[1]
# Every checkout script tools/<module>.py is a command sqr-*.
TOOL_MODULES = sorted(p.stem for p in (REPO / "tools").glob("*.py"))
# Run inside the installed environment: where sqr comes from, its configs by name, and that every
# command's entry point imports.
CHECK_INSTALL = """
import importlib.metadata, json, sqr
from sqr import model_zoo
dist = importlib.metadata.distribution("sqr")
print(json.dumps({
    "sqr": sqr.__file__,
    "dist": str(dist.locate_file("sqr/__init__.py")),
    "entry_points": {ep.name: ep.value for ep in dist.entry_points},
    "loaded": sorted(ep.load().__module__ for ep in dist.entry_points),
    "mode": model_zoo.get_config("sqr_dab_detr_r50_50ep.py").model.recollection.mode,
    "quickstart": model_zoo.get_config_file("quickstart/sqr_dab_detr_synthetic.py"),
    "shared": model_zoo.get_config_file("common/train.py"),
    "num_configs": len(model_zoo.list_configs()),
}))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _copy_checkout(dest: Path) -> Path:
    # A copy, so that the build's build/ and *.egg-info stay out of the checkout and no stale
    # build/lib from an earlier build can slip removed files into the wheel.
    generated = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__")
    outputs = (".*_cache", "output", "outputs", "datasets")
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*generated, *outputs))
    return dest


def _venv_with_wheel(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh environment with only the wheel of sqr, and the dependencies of this one."""
    venv, wheels = tmp_path / "venv", tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = _copy_checkout(tmp_path / "src")
    build = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels)]
    _run([*pip, *build, str(source)], tmp_path, env)
    (wheel,) = wheels.glob("sqr-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", str(wheel)], venv, env)
    # torch & co. from this environment, without downloads. A path line of a .pth file is
    # appended to sys.path after the environment's own packages, and .pth files inside it are
    # not run, so this environment's editable sqr (a .pth hook) stays out of reach.
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], venv, env
    )
    deps = Path(purelib.strip(), "_this_test_dependencies.pth")
    deps.write_text("\n".join(site.getsitepackages()) + "\n")
    return venv, env


@pytest.mark.slow
def test_wheel_installs_commands_and_configs(tmp_path: Path) -> None:
    venv, env = _venv_with_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()

    info = json.loads(_run([str(venv / "bin" / "python"), "-c", CHECK_INSTALL], work, env))
    package = str(venv / "lib")
    assert info["sqr"].startswith(package) and info["dist"].startswith(package)
    entry_points = info["entry_points"]
    assert all(c.startswith("sqr-") for c in entry_points)
    assert all(
        v.startswith("sqr.tools.") and v.endswith(":invoke_main") for v in entry_points.values()
    )
    assert info["loaded"] == [f"sqr.tools.{m}" for m in TOOL_MODULES]
    assert info["mode"] == "selective"
    assert info["quickstart"].startswith(package)
    # The shared parts come through the same get_config, from the copy inside the package.
    installed = os.path.dirname(info["sqr"])
    assert info["shared"] == os.path.join(installed, "config", "configs", "common", "train.py")
    assert info["num_configs"] == len(list((REPO / "projects/sqr/configs").rglob("*.py")))
    for command in entry_points:
        assert (venv / "bin" / command).is_file(), command

    # A few images, so that training and the final evaluation take seconds.
    datasets = tmp_path / "datasets"
    generate_synthetic_shapes(datasets / DIRNAME, num_train=8, num_val=2, seed=0)
    out = tmp_path / "out"
    overrides = ["train.max_iter=2", "train.eval_period=0", "dataloader.train.total_batch_size=2"]
    command = ["sqr-train", "--config-file", "quickstart/sqr_dab_detr_synthetic.py", *overrides]
    _run([*command, f"train.output_dir={out}"], work, {**env, "DETECTRON2_DATASETS": str(datasets)})
    assert (out / "model_final.pth").is_file()
    # The log shows the config file that was read: the copy inside the installed package.
    assert f"Contents of {info['quickstart']}:" in (out / "log.txt").read_text()

    assert "usage: sqr-demo" in _run(["sqr-demo", "--help"], work, env)
