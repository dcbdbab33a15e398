"""MVDream's Table 1 figures as docs/design.md §10.11 records them (secondhand; labels doubtful), for the
report's caveat table only: the paper's CLIP model and FID reference set are unknown, so our numbers are not
comparable."""

from __future__ import annotations

PAPER_TABLE1 = (
    # (row, FID, IS, CLIP score)
    ("Validation set renders", "", "12.90 ± 0.66", "30.12 ± 3.15"),
    ("3D data only", "40.38", "12.33 ± 0.63", "29.69 ± 3.36"),
    ("3D data + LAION 2D", "39.04", "12.97 ± 0.60", "30.38 ± 3.50"),
)
CAVEAT = (
    "The paper's CLIP model and FID reference set are not known (design §10) and its table's labels are "
    "secondhand: mvforge's numbers are not comparable with the paper's figures."
)
