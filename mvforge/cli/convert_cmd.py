"""`mvtrain convert`: a released MVDream checkpoint (LDM layout) as a pipeline directory (docs/design.md
§10.10).

Heavy imports (torch, diffusers, open_clip) happen inside the command body, so `mvtrain --help` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="sd-v2.1-base-4view.pt / sd-v1.5-4view.pt (or .safetensors), or a directory / Hub id of the "
            "community diffusers port (ashawkey/mvdream-sd2.1-diffusers: fetched through the HF cache)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="New directory for the pipeline (model_index.json, ...); a finished one is kept.",
        ),
    ],
    original_config: Annotated[
        Path | None,
        typer.Option(
            "--original-config",
            help="LDM yaml of the checkpoint (format of the official sd-v2-base.yaml).",
            show_default="the official architecture the checkpoint's text tower names",
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights dtype written: fp32, fp16 or bf16.")
    ] = "fp32",
) -> None:
    """Convert an official MVDream checkpoint into a pipeline directory for `mvtrain sample --model DIR`.
    Running the same command again keeps the finished directory as it is."""
    from mvforge.deps import require

    require("mvtrain convert")
    from mvforge.errors import UserError
    from mvforge.models.convert import DTYPES

    if dtype not in DTYPES:  # before torch is imported
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    from mvforge.models.convert import convert_checkpoint, convert_community, is_community_dir
    from mvforge.models.resolve import local_model_dir

    local = local_model_dir(src)
    if local.is_dir():
        if not is_community_dir(local):
            raise UserError(
                f"{src} is a directory but not the community diffusers port (unet/ of MultiViewUNetModel); "
                "pass that, or an official checkpoint file"
            )
        rep = convert_community(local, out, dtype)
    else:
        rep = convert_checkpoint(src, out, original_config, dtype)
    for leftover in rep.leftovers:
        typer.echo(f"removed {leftover}: the unfinished output of a killed conversion")
    if rep.kept:  # the same command again (docs/cli.md): the finished output stays as it is
        typer.echo(f"{rep.out}: already converted from {src} with these settings (kept as it is)")
        return
    dropped = len(rep.dropped)
    typer.echo(
        f"{rep.out}: {rep.architecture}, keys converted {rep.converted}, dropped {dropped} "
        f"(conversion.json); {rep.seconds:.1f} s, peak RSS {rep.peak_rss_mb:.0f} MiB"
    )
