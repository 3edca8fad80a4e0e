#!/usr/bin/env python
"""Draw each decoder stage's top predictions (:mod:`sqr.tools.visualize`).

A checkout's way to run the installed ``sqr-visualize`` command: same code, flags and output.
"""

from sqr.tools.visualize import invoke_main

if __name__ == "__main__":
    invoke_main()
