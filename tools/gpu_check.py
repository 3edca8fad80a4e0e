#!/usr/bin/env python
"""Check sqr on a GPU and write a markdown report (:mod:`sqr.tools.gpu_check`).

A checkout's way to run the installed ``sqr-gpu-check`` command: same code, flags and output.
"""

from sqr.tools.gpu_check import invoke_main

if __name__ == "__main__":
    invoke_main()
