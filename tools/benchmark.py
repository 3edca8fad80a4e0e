#!/usr/bin/env python
"""Measure what Selective Query Recollection costs (:mod:`sqr.tools.benchmark`).

A checkout's way to run the installed ``sqr-benchmark`` command: same code, flags and output.
"""

from sqr.tools.benchmark import invoke_main

if __name__ == "__main__":
    invoke_main()
