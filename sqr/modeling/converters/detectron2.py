"""detectron2 ResNet weights -> :class:`sqr.modeling.backbone.ResNet` (torchvision names).

Also home of the rule machinery every converter in this package shares: a converter is an
ordered table of :class:`Rule` objects applied by :func:`apply_rules`. Each source key must
fully match a rule (the first matching rule wins), otherwise :class:`ConversionError` names it:
there are no heuristics and nothing passes silently.

detectron2 names (e.g. ``detectron2://ImageNetPretrained/torchvision/R-50.pkl``, written by
detectron2's ``convert-torchvision-to-d2.py``) and ours::

    stem.conv1.weight                      -> conv1.weight
    stem.conv1.norm.X                      -> bn1.X
    res{k}.{j}.conv{n}.weight              -> layer{k-1}.{j}.conv{n}.weight
    res{k}.{j}.conv{n}.norm.X              -> layer{k-1}.{j}.bn{n}.X
    res{k}.{j}.shortcut.weight             -> layer{k-1}.{j}.downsample.0.weight
    res{k}.{j}.shortcut.norm.X             -> layer{k-1}.{j}.downsample.1.X
    stem.fc.*, fc.*, fc1000.*              -> dropped (ImageNet classifier)
    *.norm.num_batches_tracked             -> dropped (FrozenBatchNorm2d has no such buffer)

with X in ``weight, bias, running_mean, running_var``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ConversionError",
    "Rule",
    "alias",
    "apply_rules",
    "convert_detectron2_resnet",
    "drop",
    "numbered_norm_rules",
    "rename",
    "resnet_rules",
]

_NORM_FIELDS = r"(weight|bias|running_mean|running_var)"


class ConversionError(ValueError):
    """A checkpoint key that a converter cannot map (or an alias that disagrees with its source).

    Attributes:
        key: The offending source key.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Rule:
    """One line of a conversion table.

    Attributes:
        pattern: Regex that must match the whole source key.
        target: For ``kind="rename"``, the new name as an ``re`` template (``\\1`` ...); for
            ``kind="alias"``, the template of the source key this one duplicates.
        kind: ``"rename"``, ``"drop"`` (discard; ``target`` is ignored) or ``"alias"`` (discard
            after checking the value equals that of the key named by ``target``).
        why: Why a key is dropped or aliased; shown in error messages.
    """

    pattern: re.Pattern[str]
    target: str
    kind: str = "rename"
    why: str = ""


def rename(pattern: str, target: str) -> Rule:
    """A rule that renames keys fully matching ``pattern`` to the template ``target``."""
    return Rule(re.compile(pattern), target)


def drop(pattern: str, why: str) -> Rule:
    """A rule that discards keys fully matching ``pattern``; ``why`` documents the reason."""
    return Rule(re.compile(pattern), "", kind="drop", why=why)


def alias(pattern: str, source: str, why: str) -> Rule:
    """A rule that discards a duplicate key after checking it equals the key ``source`` names.

    Args:
        pattern: Regex for the duplicate key.
        source: ``re`` template naming the key the duplicate must equal.
        why: Which modules are shared; shown when the check fails.
    """
    return Rule(re.compile(pattern), source, kind="alias", why=why)


def _escape_template(text: str) -> str:
    # In re templates only the backslash is special.
    return text.replace("\\", "\\\\")


def apply_rules(state: Mapping[str, Any], rules: Iterable[Rule], fmt: str) -> dict[str, Any]:
    """Rename a state_dict with an ordered rule table.

    Args:
        state: Source ``{name: tensor}``; it is not modified.
        rules: The table; for each key the first rule whose pattern fully matches is used.
        fmt: Format name, used in error messages.

    Returns:
        A new dict with the renamed entries (same tensor objects, source order).

    Raises:
        ConversionError: A key matches no rule; two keys map to the same name; an alias's
            source is missing or holds a different value.
    """
    rules = list(rules)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        for rule in rules:
            match = rule.pattern.fullmatch(key)
            if match is not None:
                break
        else:
            raise ConversionError(key, f"{fmt}: no conversion rule matches checkpoint key '{key}'")
        if rule.kind == "drop":
            continue
        if rule.kind == "alias":
            source = match.expand(rule.target)
            if source not in state:
                raise ConversionError(
                    key,
                    f"{fmt}: key '{key}' duplicates '{source}' ({rule.why}), "
                    f"but '{source}' is not in the checkpoint",
                )
            a, b = torch.as_tensor(value), torch.as_tensor(state[source])
            if a.shape != b.shape or not torch.equal(a, b):
                raise ConversionError(
                    key,
                    f"{fmt}: key '{key}' should equal '{source}' ({rule.why}) but differs; "
                    "the checkpoint is inconsistent",
                )
            continue
        new_key = match.expand(rule.target)
        if new_key in out:
            raise ConversionError(
                key,
                f"{fmt}: checkpoint keys '{origin[new_key]}' and '{key}' both map to '{new_key}'",
            )
        out[new_key] = value
        origin[new_key] = key
    return out


def resnet_rules(source_prefix: str, target_prefix: str) -> list[Rule]:
    """The detectron2 -> torchvision ResNet table.

    Args:
        source_prefix: Regex matched before detectron2 names, e.g. ``r"backbone\\."`` or
            ``r"(?:backbone\\.)?"``. It must not contain capturing groups.
        target_prefix: Literal text put before the torchvision names, e.g. ``"backbone."``.

    Returns:
        The rules for the stem and ``res2..res5`` plus the drops listed in the module docstring.
    """
    src, dst = source_prefix, _escape_template(target_prefix)
    rules = [
        rename(rf"{src}stem\.conv1\.weight", f"{dst}conv1.weight"),
        rename(rf"{src}stem\.conv1\.norm\.{_NORM_FIELDS}", rf"{dst}bn1.\1"),
    ]
    for k in range(2, 6):
        layer = f"{dst}layer{k - 1}"
        block = rf"{src}res{k}\.(\d+)"
        rules += [
            rename(rf"{block}\.conv([123])\.weight", rf"{layer}.\1.conv\2.weight"),
            rename(rf"{block}\.conv([123])\.norm\.{_NORM_FIELDS}", rf"{layer}.\1.bn\2.\3"),
            rename(rf"{block}\.shortcut\.weight", rf"{layer}.\1.downsample.0.weight"),
            rename(rf"{block}\.shortcut\.norm\.{_NORM_FIELDS}", rf"{layer}.\1.downsample.1.\2"),
        ]
    rules += [
        drop(
            rf"{src}(?:stem\.conv1|res[2-5]\.\d+\.(?:conv[123]|shortcut))\.norm"
            r"\.num_batches_tracked",
            "FrozenBatchNorm2d has no num_batches_tracked buffer",
        ),
        drop(rf"{src}(?:stem\.)?(?:fc|fc1000)\.(?:weight|bias)", "ImageNet classifier"),
    ]
    return rules


def numbered_norm_rules(source_prefix: str, norms_per_layer: Mapping[str, int]) -> list[Rule]:
    """Transformer-layer norms numbered in operation order from 0 (detrex's and mmcv's
    ``{coder}.layers.{i}.norms.{n}``) -> ours, named by role order ``norm{n + 1}``.

    Args:
        source_prefix: Regex matched before ``{coder}``, e.g. ``r"transformer\\."``. It must
            not contain capturing groups.
        norms_per_layer: Norms in each layer of each coder, e.g. ``{"encoder": 2,
            "decoder": 3}``.

    Returns:
        One rename rule per coder and norm, in that order.
    """
    return [
        rename(
            rf"{source_prefix}{coder}\.layers\.(\d+)\.norms\.{n}\.(weight|bias)",
            rf"{coder}.layers.\1.norm{n + 1}.\2",
        )
        for coder, count in norms_per_layer.items()
        for n in range(count)
    ]


def convert_detectron2_resnet(
    state: Mapping[str, Any], prefix: str = "backbone."
) -> dict[str, Any]:
    """Convert detectron2 ResNet weights to :class:`~sqr.modeling.backbone.ResNet` names.

    Args:
        state: detectron2 names, each with or without a ``backbone.`` prefix (the ImageNet
            ``R-*.pkl`` files have none; detectron2 detector checkpoints have it).
        prefix: Put before every output name; ``""`` to load into a bare ``ResNet``.

    Returns:
        ``{torchvision name with prefix: tensor}``.

    Raises:
        ConversionError: For a key outside the table, e.g. a Caffe2-named MSRA file
            (``res2_0_branch2a_w``): convert it to detectron2 names first.
    """
    return apply_rules(state, resnet_rules(r"(?:backbone\.)?", prefix), "detectron2_resnet")
