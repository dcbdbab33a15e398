"""docs/cli.md, "names" and "errors": the removed old names are click's "No such option"; a flag that would do
nothing in the mode asked for is one line naming it, before anything loads; the execution flags of `mvtrain fit`
reach the config fields they stand for. In-process (CliRunner), nothing trains."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mvforge.cli import mvdata, mvtrain
from mvforge.errors import UserError

APPS = {"mvdata": mvdata.app, "mvtrain": mvtrain.app}


@pytest.mark.parametrize(
    ("app", "argv"),
    [
        ("mvdata", ["filter", "r", "--out", "o", "--model", "ViT-B-32"]),
        ("mvdata", ["filter", "r", "--out", "o", "--pretrained", "openai"]),
        ("mvdata", ["filter", "r", "--out", "o", "--model-config", "c.json"]),
        ("mvtrain", ["fit", "--pretrained", "m"]),
        ("mvtrain", ["fit", "--use-gpu"]),
        ("mvtrain", ["fit-vae", "--model", "m", "--shards", "s", "--out", "o", "--steps", "3"]),
        ("mvtrain", ["sds", "--steps", "3"]),
        ("mvtrain", ["sds", "--gpus-per-task", "1"]),
        ("mvtrain", ["sample", "--run", "r", "--out", "o"]),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[:1] + [w for w in v if w.startswith("--")][-1:]),
)
def test_removed_names_are_unknown_options(app, argv):
    res = CliRunner().invoke(APPS[app], argv)
    assert res.exit_code == 2 and "No such option" in res.output, res.output


def _refused(argv: list[str], *needles: str) -> str:
    res = CliRunner().invoke(mvtrain.app, argv)
    assert isinstance(res.exception, UserError), (res.exit_code, res.output, res.exception)
    msg = str(res.exception)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_eval_known_answer_refuses_the_table_1_flags(tmp_path):
    base = ["eval", "--known-answer", "--model", "m", "--reference", "r", "--out", str(tmp_path / "o")]
    _refused(
        [*base, "--features", "tiny", "--image-size", "64"], "--features", "--image-size", "--known-answer"
    )
    _refused(
        [*base, "--clip-pretrained", "local-dir:x", "--resolution", "32"], "--clip-pretrained", "--resolution"
    )
    _refused([*base, "--sds", "d"], "--sds")
    gen = ["eval", "--known-answer", "--generated", "g", "--reference", "r", "--out", str(tmp_path / "o")]
    _refused([*gen, "--steps", "2", "--device", "cpu"], "--steps", "--device", "--generated")
    assert not (tmp_path / "o").exists()


def test_eval_sds_only_refuses_the_sampling_flags(tmp_path):
    argv = ["eval", "--sds", "d", "--out", str(tmp_path / "o"), "--steps", "3", "--reference", "r"]
    _refused(argv, "--steps", "--reference", "without --model")


def test_fit_device_and_gpus_per_worker_each_belong_to_one_mode(tmp_path):
    base = ["fit", "--model", "m", "--shards", "s", "--out", str(tmp_path / "run")]
    _refused([*base, "--gpus-per-worker", "1"], "--gpus-per-worker 1", "--workers")
    _refused([*base, "--workers", "2", "--device", "cpu"], "--device cpu", "--gpus-per-worker")
    _refused([*base, "--workers", "2", "--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5", "1", "0")
    _refused([*base, "--device", "tpu"], "--device 'tpu'", "auto, cpu or cuda")
    assert not (tmp_path / "run").exists()


def test_fit_execution_flags_reach_the_config(tmp_path, monkeypatch):
    """--device sets FitConfig.device (the old --set device=...); --gpus-per-worker 1 is Ray Train's use_gpu
    (the old --use-gpu), 0 (the default) is CPU workers."""
    import mvforge.train.loop as loop
    import mvforge.train.ray_fit as ray_fit

    seen = {}
    monkeypatch.setattr(loop, "fit", lambda cfg: seen.update(device=cfg.device))

    class Result:
        error, path, metrics = None, "p", {}

    def fake_ray(cfg, workers, use_gpu, **_):
        seen.update(workers=workers, use_gpu=use_gpu, device=cfg.device)
        return Result()

    monkeypatch.setattr(ray_fit, "fit_with_ray", fake_ray)
    base = ["fit", "--model", "m", "--shards", "s", "--out", str(tmp_path / "run")]
    for argv, want in [
        ([*base, "--device", "cpu"], {"device": "cpu"}),
        ([*base, "--set", "device=cpu"], {"device": "cpu"}),
        (base, {"device": "auto"}),
        (
            [*base, "--workers", "2", "--gpus-per-worker", "1"],
            {"workers": 2, "use_gpu": True, "device": "auto"},
        ),
        ([*base, "--workers", "2"], {"workers": 2, "use_gpu": False, "device": "auto"}),
    ]:
        seen.clear()
        res = CliRunner().invoke(mvtrain.app, argv)
        assert res.exit_code == 0, (argv, res.output, res.exception)
        assert seen == want, argv


def test_fit_without_a_model_names_model(tmp_path):
    _refused(["fit", "--shards", "s", "--out", str(tmp_path / "run")], "--model")


def test_sds_ray_flags_need_prompts(tmp_path):
    base = ["sds", "--model", "m", "--prompt", "a cup", "--out", str(tmp_path / "o")]
    _refused([*base, "--seeds", "0,1", "--workers", "2"], "--seeds", "--workers", "--prompts")
    _refused([*base, "--gpus-per-worker", "0", "--task-timeout", "60"], "--gpus-per-worker", "--task-timeout")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cup\n")
    _refused(["sds", "--model", "m", "--prompts", str(prompts), "--preview"], "--preview", "--prompts")
    assert not (tmp_path / "o").exists()


def test_sds_workers_must_be_positive():
    from mvforge.sds.config import SDSConfig
    from mvforge.sds.ray_prompts import run_prompts

    with pytest.raises(UserError, match="--workers 0"):
        run_prompts(SDSConfig(model="m"), ["a cup"], [0], workers=0)  # refused before Ray starts


def test_tiny_sd_attention_heads_reach_the_unet_and_odd_counts_are_refused(tmp_path):
    import json

    res = CliRunner().invoke(
        mvtrain.app,
        ["make-tiny-sd", "--out", str(tmp_path / "one"), "--variant", "world", "--attention-heads", "1"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "one" / "unet" / "config.json").read_text())["attention_head_dim"] == 1
    _refused(["make-tiny-sd", "--out", str(tmp_path / "three"), "--attention-heads", "3"], "use 1, 2, 4, 8")
    _refused(
        ["make-tiny-sd", "--out", str(tmp_path / "mv"), "--multiview", "--attention-heads", "1"],
        "--attention-heads",
    )
    assert not (tmp_path / "three").exists() and not (tmp_path / "mv").exists()
    # A finished directory is kept only when it has the heads asked for (a resumed demo built with other heads).
    one = ["make-tiny-sd", "--out", str(tmp_path / "one"), "--variant", "world", "--attention-heads", "1"]
    _refused(one[:5], "holds another tiny model (--attention-heads 1 there, not 8)")
    _refused([*one, "--seed", "3"], "(--seed 0 there, not 3)")
    _refused(
        [*one, "--prediction-type", "v_prediction"], "(--prediction-type epsilon there, not v_prediction)"
    )
    _refused([*one[:4], "tiny", *one[5:]], "(--variant world there, not tiny)")
    kept = CliRunner().invoke(mvtrain.app, one)
    assert kept.exit_code == 0 and "exists; remove it to rebuild" in kept.output
    _refused([*one[:4], "bogus", *one[5:]], "unknown tiny model variant 'bogus'")  # the flag, not the dir
    (tmp_path / "one" / "mvforge-tiny.json").write_text("{")
    _refused(one, "mvforge-tiny.json is unreadable; remove")
