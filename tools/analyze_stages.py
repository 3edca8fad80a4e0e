#!/usr/bin/env python
"""Stage-wise analysis of a trained detector (:mod:`sqr.tools.analyze_stages`).

A checkout's way to run the installed ``sqr-analyze`` command: same code, flags and output.
"""

from sqr.tools.analyze_stages import invoke_main

if __name__ == "__main__":
    invoke_main()
