"""mvforge: multi-view 3D generation data and training (MVDream, arXiv 2308.16512)."""

__version__ = "0.1.0"
