"""Maintainer tools of the repository, outside the installed package (``pyproject.toml`` packages ``mvforge*``
only). Run them from the repository root, e.g. ``python tools/make_demo_assets.py mvforge/assets/demo``."""
