"""Test-only support code: a stand-in detector and multi-process workers."""
