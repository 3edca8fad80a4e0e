#!/usr/bin/env python
"""Convert a checkpoint to sqr's parameter names (:mod:`sqr.tools.convert_checkpoint`).

A checkout's way to run the installed ``sqr-convert`` command: same code, flags and output.
"""

from sqr.tools.convert_checkpoint import invoke_main

if __name__ == "__main__":
    invoke_main()
