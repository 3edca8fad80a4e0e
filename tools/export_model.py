#!/usr/bin/env python
"""Export a trained detector to ONNX or torch.export and check it (:mod:`sqr.tools.export_model`).

A checkout's way to run the installed ``sqr-export`` command: same code, flags and output.
"""

from sqr.tools.export_model import invoke_main

if __name__ == "__main__":
    invoke_main()
