"""Package list for setuptools (the rest of the metadata is in pyproject.toml): every package
under src/ plus ``crossdistill.conf``, the Hydra configs of conf/ (mapped there by
``[tool.setuptools] package-dir``), which pyproject.toml's package discovery cannot add."""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "crossdistill.conf"])
