"""Adapters that let other frameworks train and evaluate sqr detectors.

Each submodule imports its framework only when used, so ``import sqr`` never needs it:
``sqr.integrations.detectron2`` speaks detectron2's (and so detrex's) model interface.
"""
