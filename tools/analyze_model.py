#!/usr/bin/env python
"""Parameters and FLOPs of a detector per module (:mod:`sqr.tools.analyze_model`).

A checkout's way to run the installed ``sqr-analyze-model`` command.
"""

from sqr.tools.analyze_model import invoke_main

if __name__ == "__main__":
    invoke_main()
