"""Build script: the cffi API-mode frame converter lives in csrc/ (see odyssey_sync/_build_yuv.py)."""

from setuptools import setup

setup()
