"""`mvdata doctor` and every summary table print values as text: "mvforge[render]" is not rich markup."""

from __future__ import annotations

from rich.console import Console

from mvforge.progress import summary_table


def test_summary_values_keep_square_brackets():
    """Fails before: rich read "[render]" as a style tag and printed "needs mvforge"."""
    console = Console(record=True, width=100)
    console.print(summary_table("commands", [("mvdata render", "needs mvforge[render]"), ("[b]x[/b]", "ok")]))
    text = console.export_text()
    assert "needs mvforge[render]" in text and "[b]x[/b]" in text
