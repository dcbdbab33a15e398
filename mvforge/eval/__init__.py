"""`mvtrain eval`: the paper's Table 1 metrics (MVDream §5.1: FID, IS, CLIP score; plus KID) and mvforge's own
multi-view consistency figure, on images generated through the shared model layer (docs/design.md §10.10).

``metrics`` holds the definitions as functions of feature arrays and logits (numpy/scipy only); ``extractors``
the injectable feature extractors (local weight files only); ``run`` the resumable generate -> score loop.
"""
