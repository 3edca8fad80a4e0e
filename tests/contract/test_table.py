"""The detector table is complete and consistent: every detector recipe is in it once, its
formats are converters, and what derives from it (native modules, the tests' tiny overrides)
does."""

from __future__ import annotations

from collections import Counter

from contract.models import CONFIGS
from helpers import tiny
from omegaconf import OmegaConf

from sqr.config import LazyConfig
from sqr.modeling import converters, table

# Recipes sit at the top of projects/sqr/configs. Not there: models/ (model fragments the
# recipes import), quickstart/ (the synthetic toy recipe), detrex/ (the recipes run through the
# detrex integration, model.detector = the recipe's model), detrex_weights/ (released weights
# evaluated with a recipe's model), common/.
RECIPES = sorted(path.name for path in CONFIGS.glob("*.py"))


def test_every_recipe_belongs_to_exactly_one_entry() -> None:
    owners = Counter()
    for entry in table.DETECTORS:
        for recipe in (entry, *entry.variants):
            owners.update({recipe.config, recipe.baseline_config})
    assert sorted(owners) == RECIPES, "recipes without an entry, or entries without a recipe"
    assert set(owners.values()) == {1}, owners


def test_names_are_unique_and_configs_are_sqr_recipes() -> None:
    names = [entry.name for entry in table.DETECTORS]
    assert len(set(names)) == len(names)
    for entry in table.DETECTORS:
        assert entry.config.startswith("sqr_") and entry.baseline_config != entry.config
        assert table.entry(entry.name) is entry


def test_the_baseline_twin_is_the_sqr_recipe_without_recollection() -> None:
    for entry in table.DETECTORS:
        sqr = LazyConfig.load(str(CONFIGS / entry.config))
        base = LazyConfig.load(str(CONFIGS / entry.baseline_config))
        assert (sqr.model.recollection.mode, base.model.recollection.mode) == ("selective", "none")
        LazyConfig.apply_overrides(sqr, [table.BASELINE])
        for cfg in (sqr, base):  # start_stage means nothing without recollection
            cfg.model.recollection.start_stage = None
            cfg.train.output_dir = None
        assert OmegaConf.to_container(sqr, resolve=False) == OmegaConf.to_container(
            base, resolve=False
        ), entry.name


def test_formats_are_converters_and_each_detector_format_has_a_detector() -> None:
    claimed = {fmt for entry in table.DETECTORS for fmt in entry.formats}
    assert claimed.isdisjoint(table.BACKBONE_FORMATS)
    assert claimed | set(table.BACKBONE_FORMATS) == set(converters.CONVERTERS)


def test_native_modules_are_the_tables() -> None:
    union = set().union(*(entry.native_modules for entry in table.DETECTORS))
    assert converters.NATIVE_MODULES == union


def test_the_tests_tiny_overrides_are_the_tables() -> None:
    # tests/helpers/tiny.py names some families for tests that build one by hand; each of its
    # lists is its family's table entry (a new family needs no entry there).
    by_family = {entry.family: list(entry.tiny) for entry in table.DETECTORS}
    names = [name for name in dir(tiny) if name.startswith("TINY_")]
    assert names
    for name in names:
        assert getattr(tiny, name) == by_family[name.removeprefix("TINY_").lower()], name
