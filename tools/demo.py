#!/usr/bin/env python
"""Draw a trained detector's detections on your own images (:mod:`sqr.tools.demo`).

A checkout's way to run the installed ``sqr-demo`` command: same code, flags and output.
"""

from sqr.tools.demo import invoke_main

if __name__ == "__main__":
    invoke_main()
