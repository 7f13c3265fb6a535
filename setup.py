"""Builds the optional C extension; everything else is declared in setup.cfg and pyproject.toml.

`sam_peft.metrics.sod._edt` (the weighted F-measure's distance transform) is optional: where it cannot be compiled,
the install still succeeds and the metrics use scipy's transform instead, with the same results, more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sam_peft.metrics.sod._edt", ["sam_peft/metrics/sod/_edt.c"], optional=True)])
