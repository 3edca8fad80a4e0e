"""The published checkpoints, and how a checkpoint reference becomes a local file.

A checkpoint reference (e.g. ``train.init_checkpoint`` in a config) is one of:

* a local path, such as ``/data/ckpt/model_final.pth``: returned unchanged if it exists, otherwise
  :class:`FileNotFoundError`;
* ``sqr://NAME``: an entry of :data:`CHECKPOINTS`, downloaded to ``cache_dir() / entry.filename``
  and verified against ``entry.sha256`` when that is known;
* ``detectron2://PATH``: rewritten to ``DETECTRON2_PREFIX + PATH`` (detectron2's public file
  server; ``$SQR_DETECTRON2_PREFIX`` overrides it) and then handled as an ``https://`` URL;
* ``http://...`` or ``https://...``: downloaded to ``cache_dir() / <host> / <url path>``, so one
  URL always maps to one file. A file already there is returned without any network access.

Downloads go through :func:`sqr.model_zoo.downloads.download` (atomic, verified, bounded).

Some checkpoints live on Google Drive, which often refuses scripted downloads (a confirmation page
or a quota error). When a download fails, the error names the cache path: download the file by
hand, save it there, and the next ``resolve`` call uses it without touching the network.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .downloads import DownloadError, cache_path, download, url_cache_relpath

__all__ = ["CHECKPOINTS", "DETECTRON2_PREFIX", "ZooEntry", "resolve"]

logger = logging.getLogger(__name__)

#: Public download prefix for ``detectron2://`` references; ``$SQR_DETECTRON2_PREFIX`` wins.
DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"

_DETREX_RELEASE = "https://github.com/IDEA-Research/detrex-storage/releases/download/v0.1.0/"
_SCHEME_SEP = "://"
_RTDETR_RELEASE = "https://github.com/lyuwenyu/storage/releases/download/"

# lyuwenyu/RT-DETR's published RT-DETRv2 checkpoints (rtdetrv2_pytorch/README.md at 068dfde):
# zoo name -> release path; converter "rtdetrv2" (their "ema" entry holds the evaluated weights
# where the file has one). The name is the recipe's official config name.
_RTDETRV2 = {
    "rtdetrv2_r18vd_120e_coco": "v0.2/rtdetrv2_r18vd_120e_coco_rerun_48.1.pth",  # 48.1 AP
    "rtdetrv2_r34vd_120e_coco": "v0.1/rtdetrv2_r34vd_120e_coco_ema.pth",  # 49.9
    "rtdetrv2_r50vd_m_7x_coco": "v0.1/rtdetrv2_r50vd_m_7x_coco_ema.pth",  # 51.9
    "rtdetrv2_r50vd_6x_coco": "v0.1/rtdetrv2_r50vd_6x_coco_ema.pth",  # 53.4
    "rtdetrv2_r101vd_6x_coco": "v0.1/rtdetrv2_r101vd_6x_coco_from_paddle.pth",  # 54.3
    # Discrete sampling (model.decoder.cross_attn_method="discrete").
    "rtdetrv2_r18vd_dsp_3x_coco": "v0.1/rtdetrv2_r18vd_dsp_3x_coco.pth",  # 47.4
    "rtdetrv2_r34vd_dsp_1x_coco": "v0.1/rrtdetrv2_r34vd_dsp_1x_coco.pth",  # 49.2 (sic: "rr")
    "rtdetrv2_r50vd_m_dsp_3x_coco": "v0.1/rtdetrv2_r50vd_m_dsp_3x_coco.pth",  # 51.4
    "rtdetrv2_r50vd_dsp_1x_coco": "v0.1/rtdetrv2_r50vd_dsp_1x_coco.pth",  # 52.9
    # Fewer sampling points (model.decoder.num_points per level: sp1 [1, 1, 1] ... sp3 [3, 3, 3]).
    "rtdetrv2_r18vd_sp1_120e_coco": "v0.1/rtdetrv2_r18vd_sp1_120e_coco.pth",  # 47.3
    "rtdetrv2_r18vd_sp2_120e_coco": "v0.1/rtdetrv2_r18vd_sp2_120e_coco.pth",  # 47.7
    "rtdetrv2_r18vd_sp3_120e_coco": "v0.1/rtdetrv2_r18vd_sp3_120e_coco.pth",  # 47.8
}
# The ImageNet PResNet-vd weights the RT-DETRv2 recipes start from (bare state_dicts; converter
# "rtdetr_presnet", loaded under backbone.).
_PRESNET = {
    "presnet18_vd": "v0.1/ResNet18_vd_pretrained_from_paddle.pth",
    "presnet34_vd": "v0.1/ResNet34_vd_pretrained_from_paddle.pth",
    "presnet50_vd": "v0.1/ResNet50_vd_ssld_v2_pretrained_from_paddle.pth",
    "presnet101_vd": "v0.1/ResNet101_vd_ssld_pretrained_from_paddle.pth",
}


@dataclass(frozen=True)
class ZooEntry:
    """One official checkpoint.

    Attributes:
        url: Direct-download URL.
        sha256: Hex digest of the file, verified after download when not ``None``.
        filename: Path of the file relative to :func:`~sqr.model_zoo.downloads.cache_dir`.
        note: Extra advice shown when the download fails (e.g. for Google Drive files).
    """

    url: str
    sha256: str | None
    filename: str
    note: str = ""


def _gdrive(file_id: str, fmt: str = "") -> tuple[str, str]:
    url = f"https://drive.google.com/uc?export=download&id={file_id}"
    note = (
        "This file is hosted on Google Drive, which often requires a confirmation step or hits "
        f"a download quota. Open https://drive.google.com/file/d/{file_id} in a browser, download "
        "it, and save it at the cache path given above."
    )
    if fmt:
        note += f" The checkpoint is in {fmt} format."
    return url, note


def _build_table() -> dict[str, ZooEntry]:
    table: dict[str, ZooEntry] = {}
    detrex = {
        "dab_detr_r50_50ep": "dab_detr_r50_50ep.pth",  # detrex, 43.3 AP
        # The original Deformable-DETR weights in detrex names: their neck convolutions have
        # biases, so load them into a model built with model.neck.bias=True.
        "deformable_detr_r50_converted": "converted_deformable_detr_r50.pth",
        "deformable_detr_r50_box_refine_converted": (
            "converted_deformable_detr_r50_with_box_refine_50ep.pth"
        ),
        "deformable_detr_r50_two_stage_converted": "converted_deformable_detr_two_stage_50ep.pth",
    }
    for name, fname in detrex.items():
        table[name] = ZooEntry(url=_DETREX_RELEASE + fname, sha256=None, filename=fname)
    # detrex DINO R50 4-scale, 12 epochs, 49.2 AP (release v0.2.0); converter "detrex_dino".
    dino = "dino_r50_4scale_12ep_49_2AP.pth"
    table["dino_r50_4scale_12ep"] = ZooEntry(
        url=_DETREX_RELEASE.replace("v0.1.0", "v0.2.0") + dino, sha256=None, filename=dino
    )
    drive = {
        "sqr_dab_detr_r50_50ep": ("1Zz298GPYvDfF1RjSTk1e_ZoBy3NtXxWd", ""),
        "sqr_deformable_detr_r50_50ep": ("1JTWmHXPngUJY7EaYMneVHYYlvK_5GDfV", "mmdet"),
        "sqr_adamixer_r50_1x": ("1-io4kMQ-6h814AMmE7wKKUcEmTjLdpIa", "mmdet"),
        "sqr_adamixer_r101_7stage_300q_3x": ("1alJNY8eJy-E7mURJDj5LZFHNZ6SG88CF", "mmdet"),
    }
    for name, (file_id, fmt) in drive.items():
        url, note = _gdrive(file_id, fmt)
        table[name] = ZooEntry(url=url, sha256=None, filename=f"{name}.pth", note=note)
    for name, path in {**_RTDETRV2, **_PRESNET}.items():
        url = _RTDETR_RELEASE + path
        table[name] = ZooEntry(url=url, sha256=None, filename=f"rtdetr/{path.split('/')[-1]}")
    for name in ("R-50", "R-101"):
        url = DETECTRON2_PREFIX + f"ImageNetPretrained/torchvision/{name}.pkl"
        # Same cache file as the equivalent detectron2:// reference, so either spelling hits it.
        table[name] = ZooEntry(url=url, sha256=None, filename=url_cache_relpath(url).as_posix())
    return table


#: Official checkpoints, addressable as ``sqr://NAME``.
CHECKPOINTS: dict[str, ZooEntry] = _build_table()


def _detectron2_prefix() -> str:
    # Read at call time, not import time, so tests and mirrors can override it late.
    prefix = os.environ.get("SQR_DETECTRON2_PREFIX") or DETECTRON2_PREFIX
    return prefix if prefix.endswith("/") else prefix + "/"


def _resolve_url(url: str, progress: bool) -> str:
    dest = cache_path(url_cache_relpath(url), url)
    if dest.is_file():
        logger.debug("Using cached %s for %s", dest, url)
        return str(dest)
    return str(download(url, dest, progress=progress))


def _resolve_zoo(name: str, progress: bool) -> str:
    entry = CHECKPOINTS.get(name)
    if entry is None:
        known = ", ".join(sorted(CHECKPOINTS))
        raise ValueError(f"Unknown checkpoint 'sqr://{name}'. Known names: {known}")
    dest = cache_path(entry.filename, f"sqr://{name}")
    if dest.is_file():
        # Not re-hashed: a file the user placed by hand is trusted, and hashing GBs is slow.
        logger.debug("Using cached %s for sqr://%s", dest, name)
        return str(dest)
    try:
        return str(download(entry.url, dest, sha256=entry.sha256, progress=progress))
    except DownloadError as e:
        if not entry.note:
            raise
        raise DownloadError(f"{e}\nNote: {entry.note}") from e


def resolve(path_or_url: str, *, progress: bool = True) -> str:
    """Turn a checkpoint reference into a local file path, downloading it if needed.

    See the module docstring for the accepted forms (local path, ``sqr://``, ``detectron2://``,
    ``http(s)://``).

    Args:
        path_or_url: The checkpoint reference.
        progress: Show a progress bar while downloading.

    Returns:
        Path of an existing local file.

    Raises:
        ValueError: Empty reference, unsupported scheme, unknown ``sqr://`` name (the message
            lists the known names), or a URL whose host or path would leave the cache.
        FileNotFoundError: A local path that does not exist.
        DownloadError: The download failed (see :func:`download`).
    """
    if not path_or_url:
        raise ValueError(
            f"Empty checkpoint reference {path_or_url!r}; skip loading instead of resolving it"
        )
    if _SCHEME_SEP not in path_or_url:
        path = os.path.expanduser(path_or_url)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file {path_or_url!r} does not exist")
        return path

    scheme, rest = path_or_url.split(_SCHEME_SEP, 1)
    scheme = scheme.lower()
    if scheme == "sqr":
        return _resolve_zoo(rest, progress)
    if scheme == "detectron2":
        return _resolve_url(_detectron2_prefix() + rest.lstrip("/"), progress)
    if scheme in ("http", "https"):
        return _resolve_url(path_or_url, progress)
    raise ValueError(
        f"Unsupported checkpoint scheme {scheme!r} in {path_or_url!r}; "
        "use a local path, sqr://, detectron2://, http:// or https://"
    )
