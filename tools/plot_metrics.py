#!/usr/bin/env python
"""Plot training curves from metrics.json (:mod:`sqr.tools.plot_metrics`).

A checkout's way to run the installed ``sqr-plot`` command: same code, flags and output.
"""

from sqr.tools.plot_metrics import invoke_main

if __name__ == "__main__":
    invoke_main()
