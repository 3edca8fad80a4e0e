#!/usr/bin/env python
"""Train or evaluate a detector described by a LazyConfig file (:mod:`sqr.tools.train_net`).

A checkout's way to run the installed ``sqr-train`` command: same code, flags and output.
"""

from sqr.tools.train_net import invoke_main

if __name__ == "__main__":
    invoke_main()
