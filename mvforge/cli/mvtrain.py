"""`mvtrain`: the training stages (multi-view UNet fit, sampling, text-to-3D score distillation).

Heavy imports (torch, diffusers, ray) happen inside the command bodies, so `mvtrain --help` stays fast.
"""

from __future__ import annotations

from mvforge.cli import convert_cmd, dreambooth_cmd, eval_cmd, fit_cmd, fit_vae_cmd, sample_cmd, sds_cmd
from mvforge.cli.common import make_app, reflow_help, run_app

app = make_app(
    "mvtrain", "mvforge training stages: multi-view diffusion fit, sampling and score distillation."
)


# One module per command (docs/design.md §5); each body imports what it needs, so --help stays light.
app.command("fit")(fit_cmd.fit)
app.command("fit-vae")(fit_vae_cmd.fit_vae)
app.command("make-tiny-sd")(sample_cmd.make_tiny_sd)
app.command("sample")(sample_cmd.sample)
app.command("sds")(sds_cmd.sds)
app.command("convert")(convert_cmd.convert)
app.command("eval")(eval_cmd.eval_)
app.command("dreambooth")(dreambooth_cmd.dreambooth)

reflow_help(app)
main = run_app(app)

if __name__ == "__main__":
    main()
