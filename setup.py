"""Maps the top-level folders to namespaced import names (metadata lives in pyproject.toml).

``node/`` → ``spinexr.node``, ``pipeline/`` → ``spinexr.pipeline``, ``training/`` →
``spinexr.training``, ``fuzz/`` → ``spinexr.fuzz``: bare names would collide in site-packages.
"""

from setuptools import find_packages, setup

TOP = ("node", "pipeline", "training", "fuzz")
found = find_packages(include=[f"{t}*" for t in TOP])
setup(
    packages=[f"spinexr.{p}" for p in found],
    package_dir={f"spinexr.{t}": t for t in TOP},
)
