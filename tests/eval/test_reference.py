"""Reference reading (render directory or shards, the held-out split) and the one image preparation both sets
go through (docs/eval.md)."""

from __future__ import annotations

from PIL import Image

from mvforge.eval import run
from mvforge.formats import renders as layout
from mvforge.shards import schema


def test_shards_reference_reads_the_val_split(tmp_path, reference_dir):
    objs = list(layout.iter_objects(reference_dir))
    shards = tmp_path / "shards"
    shards.mkdir()
    for name, chunk in (("train-000000.tar", objs[:2]), ("val-000000.tar", objs[2:])):
        with (shards / name).open("wb") as f:
            schema.write_samples(f, [(o.uid, schema.object_members(o)) for o in chunk])
    (ref,) = run.read_reference(shards, views=4, split="val")
    assert ref.key == objs[2].uid and ref.caption == objs[2].caption
    assert len(ref.views) == 4 and ref.views[0].mode == "RGBA"
    # The same object from the render directory: the same evenly spaced views (0, 2, 4, 6 of 8).
    from_renders = run.read_reference(reference_dir, views=4)[2]
    assert [im.tobytes() for im in from_renders.views] == [im.tobytes() for im in ref.views]
    assert len(run.read_reference(shards, views=4, split="test")) == 3  # no such split: every shard


def test_prepare_composites_on_background_and_resizes():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    out = run.prepare(im, (0, 0, 255), 8)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert out.getpixel((7, 7)) == (0, 0, 255)  # transparent -> the background
    same = run.prepare(Image.new("RGB", (8, 8), (1, 2, 3)), (255, 255, 255), 8)
    assert same.getpixel((3, 3)) == (1, 2, 3)  # opaque, right size: unchanged


def test_a_damaged_reference_shard_is_one_line_naming_it_and_mvdata_verify(tmp_path, reference_dir):
    import pytest

    from mvforge.errors import UserError

    objs = list(layout.iter_objects(reference_dir))
    shards = tmp_path / "shards"
    shards.mkdir()
    tar = shards / "val-000000.tar"
    with tar.open("wb") as f:
        schema.write_samples(f, [(o.uid, schema.object_members(o)) for o in objs[:2]])
    whole = tar.read_bytes()
    tar.write_bytes(whole[: len(whole) // 2 + 7])  # truncated
    with pytest.raises(UserError, match=rf"^shard {tar} is unreadable .*`mvdata verify {shards}`"):
        run.read_reference(shards, views=4)
    png = whole.index(b"\x89PNG")
    tar.write_bytes(whole[: png + 40] + bytes(64) + whole[png + 104 :])  # a view's pixels zeroed: no PNG
    with pytest.raises(UserError, match=rf"^shard {tar}: a view of .* does not decode"):
        run.read_reference(shards, views=4)
