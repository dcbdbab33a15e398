"""`mvtrain eval`: MVDream's Table 1 metrics (FID, IS, CLIP score; + KID and mvforge's consistency figure) of a
multi-view model against reference renders, and CLIP scores of `mvtrain sds` results.

Nothing heavy is imported at module level (docs/design.md §5): torch, diffusers and open_clip load in the
body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import quiet_libraries, set_help


def eval_(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for eval.json, eval.csv, grids/ (resumable).")
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="`mvtrain fit` run, checkpoint, or pipeline directory to generate with."
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Held-out render directory or shard directory (its val split)."),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="Text file, one prompt per line.", show_default="the reference captions"
        ),
    ] = None,
    sds: Annotated[
        list[Path],
        typer.Option(
            "--sds",
            help="`mvtrain sds` run directory, --prompts batch directory, or a parent of them; repeatable.",
        ),
    ] = [],
    config: Annotated[Path | None, typer.Option("--config", help="TOML config (EvalConfig).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=set_help("sample.steps=20"))] = [],
    features: Annotated[
        str | None,
        typer.Option(
            help="FID/KID/IS features: inception (needs --inception-weights) or tiny (smoke tests)."
        ),
    ] = None,
    inception_weights: Annotated[
        Path | None, typer.Option(help="torchvision inception_v3 ImageNet weights file (.pth).")
    ] = None,
    clip_model: Annotated[str | None, typer.Option(help="open_clip model name (clip_model).")] = None,
    clip_pretrained: Annotated[
        str | None, typer.Option(help="open_clip checkpoint file or local-dir:DIR (as `mvdata filter`).")
    ] = None,
    clip_model_config: Annotated[
        Path | None, typer.Option(help="open_clip JSON config for a custom --clip-model.")
    ] = None,
    max_prompts: Annotated[
        int | None,
        typer.Option(help="Only the first N prompts (0: all); with --known-answer the first N objects."),
    ] = None,
    num_views: Annotated[
        int | None, typer.Option(help="Views per prompt (sample.num_views).", show_default="4")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps (sample.steps).", show_default="50")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of prompt 0; prompt i uses seed + i (sample.seed).")
    ] = None,
    resolution: Annotated[
        int | None,
        typer.Option(
            help="Generated image side (sample.resolution); 0: the model's native side.", show_default="0"
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Side both sets are resized to before scoring.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    known_answer: Annotated[
        bool,
        typer.Option(
            "--known-answer",
            help="Score each reference caption's views against its own renders at the same cameras "
            "(retrieval, PSNR, silhouette IoU); --reference is the render directory the model was trained on. "
            "--set takes KnownAnswerConfig keys in this mode; --prompts is then a file of UID<TAB>PROMPT lines "
            "(sample those objects with those prompts, e.g. a DreamBooth token).",
        ),
    ] = False,
    generated: Annotated[
        Path | None,
        typer.Option(
            "--generated",
            help="With --known-answer: score this render directory (e.g. SDS meshes rendered back under their "
            "ground-truth uids) instead of sampling --model.",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="With --generated: a render directory of a baseline shape under the same uids (its IoU is "
            "reported beside each result).",
        ),
    ] = None,
) -> None:
    """Generate V views per prompt (resumable) and score them: FID, KID, IS, CLIP score, consistency."""
    from mvforge.deps import require
    from mvforge.errors import UserError

    require("mvtrain eval")
    if known_answer:
        # docs/cli.md, "errors": the Table 1 metrics' flags would do nothing here; refused, not ignored.
        _refuse(
            "with --known-answer (it scores against --reference's own renders; no FID/CLIP features)",
            {
                "--sds": sds or None,
                "--features": features,
                "--inception-weights": inception_weights,
                "--clip-model": clip_model,
                "--clip-pretrained": clip_pretrained,
                "--clip-model-config": clip_model_config,
                "--resolution": resolution,
                "--image-size": image_size,
            },
        )
        _known_answer(
            out, model, reference, config, set_, steps, seed, num_views, max_prompts, device, prompts, generated,
            baseline,
        )  # fmt: skip
        return
    if generated is not None or baseline is not None:
        raise UserError("--generated and --baseline belong to --known-answer; add it")
    cfg = _eval_config(
        config,
        set_,
        {
            "features": features,
            "inception_weights": inception_weights,
            "clip_model": clip_model,
            "clip_pretrained": clip_pretrained,
            "clip_model_config": clip_model_config,
            "max_prompts": max_prompts,
            "sample.num_views": num_views,
            "sample.steps": steps,
            "sample.seed": seed,
            "sample.resolution": resolution,
            "image_size": image_size,
        },
    )
    if model is None and not sds:
        raise UserError("pass --model DIR --reference DIR (generate and score) and/or --sds DIR")
    if model is None:
        _refuse(
            "without --model (they set how --model is sampled and compared; --sds results are only CLIP-scored)",
            {
                "--reference": reference,
                "--prompts": prompts,
                "--features": features,
                "--inception-weights": inception_weights,
                "--max-prompts": max_prompts,
                "--num-views": num_views,
                "--steps": steps,
                "--seed": seed,
                "--resolution": resolution,
            },
        )
    if model is not None and reference is None:
        raise UserError("--model needs --reference DIR (the held-out renders or shards to compare with)")
    if cfg.inception_weights is not None and not Path(cfg.inception_weights).is_file():
        raise UserError(
            f"--inception-weights {cfg.inception_weights} is not a file; pass torchvision's inception_v3 "
            "ImageNet weights (inception_v3_google-0cc3c7bd.pth)"
        )
    _score(cfg, out, model, reference, prompts, sds, device)


def _score(
    cfg,
    out: Path,
    model: Path | None,
    reference: Path | None,
    prompts: Path | None,
    sds: list[Path],
    device: str,
) -> None:
    """The Table 1 mode (``model`` given: sample and score against ``reference``) and the ``--sds`` mode (CLIP
    scores of SDS results), sharing one CLIP model; the Table 1 line is printed last."""
    # Input checks first (prompts, reference, model, weights), before the diffusion model loads.
    texts = _check_inputs(cfg, model, prompts, device)
    from mvforge.devices import resolve_device
    from mvforge.eval import extractors

    dev = resolve_device(device)
    clip = extractors.OpenClip(cfg.clip_model, cfg.clip_pretrained, cfg.clip_model_config, str(dev))
    doc = _table1(cfg, model, reference, out, texts, dev, clip) if model is not None else None
    if sds:
        _score_sds(cfg, sds, clip, out)
    if doc is not None:
        _echo_table1(doc, out)


def _eval_config(config: Path | None, set_: list[str], flags: dict):
    """The EvalConfig of ``--config`` and ``--set``, then the flags given (dotted key -> value, None: not given)."""
    from mvforge import config as config_mod
    from mvforge.eval.config import EvalConfig

    return config_mod.load(EvalConfig, config, set_, flags)


def _check_inputs(cfg, model: Path | None, prompts: Path | None, device: str) -> list[str] | None:
    """The prompts of ``--prompts`` (None: the reference captions); with ``--model``, its sampling settings and
    the model's directory checked (UserError) before anything loads."""
    from mvforge.cli.prompts import read_prompts
    from mvforge.models.resolve import resolve_model
    from mvforge.models.sample import check_config

    texts = read_prompts(prompts) if prompts is not None else None
    if model is not None:
        check_config(cfg.sample, None if device == "auto" else device)
        resolve_model(model)
    return texts


def _table1(cfg, model: Path, reference: Path, out: Path, texts: list[str] | None, dev, clip) -> dict:
    """MVDream's Table 1 mode: sample ``model`` for the prompts (resumable in ``out``) and score the images
    against ``reference`` (FID, KID, IS, CLIP score, consistency); returns eval.json's document."""
    from mvforge.eval import extractors, run

    run.read_reference(reference, 1, cfg.reference_split)  # "no renders" before any model load
    feats = (
        extractors.TinyFeatures()
        if cfg.features == "tiny"
        else extractors.InceptionFeatures(cfg.inception_weights, str(dev))
    )
    quiet_libraries()
    from mvforge.models.pipeline import MultiViewDiffusion
    from mvforge.models.sample import check_config, torch_dtype

    check_config(cfg.sample, dev.type)
    mvd = MultiViewDiffusion.from_pretrained(
        model, dev, torch_dtype(cfg.sample.precision), use_ema=cfg.sample.use_ema
    )
    if cfg.sample.resolution == 0:  # the model's native side, recorded as the number sampled at
        from mvforge.config import set_field

        cfg = set_field(cfg, "sample.resolution", mvd.resolution)
    pipe = mvd.pipeline(cfg.sample.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return run.run_eval(pipe, str(model), reference, out, cfg, feats, clip, texts, show_progress=True)


def _score_sds(cfg, sds: list[Path], clip, out: Path) -> None:
    """The ``--sds`` mode: CLIP scores of `mvtrain sds` results' turntables, written to ``out``'s sds.json and
    one line per result."""
    from mvforge.eval import run
    from mvforge.eval import sds as sds_mod
    from mvforge.formats import eval_result as result_format
    from mvforge.fsutil import atomic_write_json

    bg, size = tuple(cfg.background_rgb), cfg.image_size
    rows = sds_mod.score_sds(sds, clip, lambda im: run.prepare(im, bg, size))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / result_format.SDS, {"clip": clip.name, "results": rows})
    for r in rows:
        typer.echo(f"sds {r['dir']}: CLIP {r['clip_score']['mean']:.2f} ± {r['clip_score']['std']:.2f}")


def _echo_table1(doc: dict, out: Path) -> None:
    """The Table 1 figures of the generated images in one line, then eval.json's path."""
    from mvforge.formats import eval_result as result_format

    g = doc["metrics"]["generated"]
    typer.echo(
        f"FID {g['fid']:.3f}  KID {g['kid']['mean']:.5f}  IS {g['inception_score']['mean']:.3f}  "
        f"CLIP {g['clip_score']['over_images']['mean']:.2f}  consistency {g['consistency']['mean']:.2f}"
    )
    typer.echo(str(out / result_format.EVAL))


def _known_answer(
    out,
    model,
    reference,
    config,
    set_,
    steps,
    seed,
    num_views,
    max_prompts,
    device,
    prompts,
    generated,
    baseline,
) -> None:
    """`mvtrain eval --known-answer`: mvforge/eval/known_answer.py through the CLI, on ``--generated`` renders
    or on ``--model``'s samples."""
    from mvforge import config as config_mod
    from mvforge.errors import UserError
    from mvforge.eval.known_answer import KnownAnswerConfig

    if reference is None:
        raise UserError("--known-answer needs --reference RENDER_DIR (the trained objects' renders)")
    cfg = config_mod.load(
        KnownAnswerConfig, config, set_, {"steps": steps, "seed": seed, "num_views": num_views}
    )
    if generated is not None:
        if model is not None or prompts is not None:
            raise UserError("--generated scores renders: leave out --model and --prompts")
        _refuse(
            "with --generated (it scores renders; nothing is sampled)",
            {
                "--steps": steps,
                "--seed": seed,
                "--max-prompts": max_prompts,
                "--device": None if device == "auto" else device,
            },
        )
        _known_answer_renders(cfg, generated, reference, out, baseline)
        return
    if baseline is not None:
        raise UserError("--baseline belongs to --generated")
    if model is None:
        raise UserError("--known-answer needs --model DIR (or --generated RENDER_DIR to score renders)")
    _known_answer_samples(cfg, model, reference, out, prompts, max_prompts, device)


def _known_answer_renders(cfg, generated: Path, reference: Path, out: Path, baseline: Path | None) -> None:
    """``--known-answer --generated``: score a render directory against ``reference`` (and ``baseline``'s IoU
    beside it); one line per object, then known_answer.json's path."""
    from mvforge.eval.known_answer import score_renders
    from mvforge.formats import eval_result as result_format

    doc = score_renders(generated, reference, out, cfg, baseline)
    for r in doc["captions"]:
        shifts = ", ".join(
            f"{k}°: {v['iou']:.2f} (truth {v['truth_iou']:.2f})" for k, v in r["shifted"].items()
        )
        base = f", baseline {r['baseline_iou']:.2f}" if "baseline_iou" in r else ""
        typer.echo(
            f"{r['uid']}: retrieved {r['retrieved']}, IoU {r['iou']:.2f} (best other {r['iou_others']:.2f}"
            f"{base}), shifted IoU {shifts}, object PSNR {r['psnr_object_db']:.1f} dB"
        )
    typer.echo(str(out / result_format.KNOWN_ANSWER))


def _known_answer_samples(
    cfg, model: Path, reference: Path, out: Path, prompts: Path | None, max_prompts: int | None, device: str
) -> None:
    """``--known-answer --model``: sample the reference objects' captions (or ``--prompts``' UID<TAB>PROMPT
    lines) and score them against their own renders; one summary line, then known_answer.json's path."""
    from mvforge.errors import UserError
    from mvforge.eval.known_answer import load_references, run_known_answer
    from mvforge.formats import eval_result as result_format

    if max_prompts is not None and max_prompts < 0:
        raise UserError(f"--max-prompts {max_prompts}: pass 0 (all objects) or a positive count")
    refs = load_references(reference, cfg)  # input errors before the model loads
    captions = _read_uid_prompts(prompts) if prompts is not None else {}
    unknown = sorted(set(captions) - {r.uid for r in refs})
    if unknown:
        raise UserError(f"--prompts {prompts}: {unknown[0]} is no object of {reference}; check the uid")
    uids = (list(captions) if captions else [r.uid for r in refs])[: max_prompts or None]
    from mvforge.models.resolve import resolve_model

    resolve_model(model)
    quiet_libraries()
    from mvforge.devices import resolve_device
    from mvforge.models.pipeline import MultiViewDiffusion

    mvd = MultiViewDiffusion.from_pretrained(model, resolve_device(device))
    from mvforge.models.resolve import weights_fingerprint

    doc = run_known_answer(
        mvd, str(model), reference, out, cfg, uids, captions=captions, weights=weights_fingerprint(model)
    )
    s = doc["summary"]
    typer.echo(
        f"known answer: {s['retrieved_own']}/{s['captions']} captions retrieve their own object (a blank image: "
        f"{s['blank_image_retrieves_own']}), views one object {s['views_agree']}, "
        f"{result_format.shifted_text(s)}, mean IoU {s['mean_iou']:.2f}, mean object PSNR "
        f"{s['mean_psnr_object_db']:.1f} dB"
    )
    typer.echo(str(out / result_format.KNOWN_ANSWER))


def _refuse(mode: str, flags: dict) -> None:
    """One line naming every flag given (not None) that does nothing in ``mode``, and the fix."""
    from mvforge.errors import UserError

    given = [name for name, value in flags.items() if value is not None]
    if given:
        raise UserError(f"{', '.join(given)}: not used {mode}; leave them out")


def _read_uid_prompts(path: Path) -> dict[str, str]:
    """uid -> prompt from a file of ``UID<TAB>PROMPT`` lines (blank lines and ``#`` comments skipped)."""
    from mvforge.errors import UserError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"--prompts {path}: unreadable ({e}); give a UTF-8 file of UID<TAB>PROMPT lines"
        ) from e
    out = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        uid, sep, prompt = line.partition("\t")
        if not sep or not uid.strip() or not prompt.strip():
            raise UserError(f"--prompts {path}:{n}: expected UID<TAB>PROMPT with --known-answer")
        out[uid.strip()] = prompt.strip()
    if not out:
        raise UserError(f"--prompts {path}: no UID<TAB>PROMPT line")
    return out
