"""Prompt files of the commands that take ``--prompts FILE`` (`mvtrain sample`, `sds`, `eval`): reading and
checking the file is the CLI's concern; the directory each prompt gets is the sample format's
(:func:`mvforge.formats.samples.prompt_dirs`). Standard library only (``--help`` stays light).
"""

from __future__ import annotations

import stat
from pathlib import Path

from mvforge.errors import UserError


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (``#`` starts a comment line; a leading byte-order mark is dropped).
    Raises UserError when the path is missing, is not a regular file (a directory, a FIFO: never opened), is
    not UTF-8, cannot be read, or holds no prompt."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass a text file with one prompt per line") from None
    except OSError as e:
        raise UserError(
            f"{path} cannot be read ({e.strerror}); pass a text file with one prompt per line"
        ) from None
    if not stat.S_ISREG(mode):
        # Opening a FIFO would block until something writes to it; say what the path is instead.
        what = (
            "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        )
        raise UserError(f"{path} is {what}; pass a text file with one prompt per line")
    try:
        # utf-8-sig: a BOM (Windows editors write one) would otherwise reach the model as part of the prompt.
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 (byte {e.start}); save it as UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror}); pass a readable text file") from None
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UserError(f"{path} holds no prompts; write one prompt per line")
    return prompts
