"""`mvdata verify` finds a truncated tar, a flipped byte and a missing member; passes a good shard set."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile

from mvforge.shards.verify import verify


def _copy(shards, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shards, out)
    return out


def test_good_shards_verify_clean(shards, mvdata_bin):
    counts, problems = verify(str(shards))
    assert problems == [] and counts == {"shards": 4, "samples": 8, "bytes": counts["bytes"]}
    r = subprocess.run([mvdata_bin, "verify", str(shards)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_truncated_tar(shards, tmp_path, mvdata_bin):
    out = _copy(shards, tmp_path)
    tar = out / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    _, problems = verify(str(out))
    mine = [p.problem for p in problems if p.shard == "train-000002.tar"]
    assert any("sha256" in p for p in mine) and any("size" in p for p in mine)
    assert any("samples != index" in p or "unreadable" in p for p in mine)
    assert not any("object at 0x" in p for p in mine)  # a parse error names the shard, not a reader object
    assert {p.shard for p in problems} == {"train-000002.tar"}
    r = subprocess.run([mvdata_bin, "verify", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "train-000002.tar" in r.stderr


def test_flipped_byte(shards, tmp_path):
    out = _copy(shards, tmp_path)
    tar = out / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as t:
        m = next(m for m in t.getmembers() if m.name.endswith(".003.png"))
    data[m.offset_data + 40] ^= 0xFF  # inside the image data chunk
    tar.write_bytes(bytes(data))
    _, problems = verify(str(out))
    mine = [p for p in problems if p.shard == "train-000001.tar"]
    assert any("sha256" in p.problem for p in mine)
    assert any(p.sample == m.name.split(".")[0] and "003.png does not decode" in p.problem for p in mine)


def test_missing_member(shards, tmp_path):
    out = _copy(shards, tmp_path)
    path = out / "train-000000.tar"
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".txt"))
    dropped_png = next(m.name for m, _ in members if m.name.endswith(".005.png"))
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for m, data in members:
            if m.name not in (dropped, dropped_png):
                t.addfile(m, io.BytesIO(data))
    _, problems = verify(str(out))
    found = {(p.sample, p.problem) for p in problems}
    assert (dropped.split(".")[0], "missing member .txt") in found
    assert (dropped_png.split(".")[0], "missing member .005.png") in found


def test_missing_directory_is_a_user_error(tmp_path, mvdata_bin):
    r = subprocess.run(
        [mvdata_bin, "verify", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_a_shard_file_or_a_2d_views_directory_is_one_line_naming_the_fix(shards, tmp_path, mvdata_bin):
    from mvforge.shards import views2d

    (tar,) = sorted(shards.glob("*.tar"))[:1]
    views = tmp_path / "shards-2d"
    views.mkdir()
    (views / views2d.RECORD).write_text("{}")
    for path, said in ((tar, "is a file; pass the shard directory"), (views, "holds the 2D views of")):
        r = subprocess.run([mvdata_bin, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_corrupt_index_is_a_user_error(shards, tmp_path, mvdata_bin):
    out = _copy(shards, tmp_path)
    (out / "index.json").write_text('{"shards": [')
    r = subprocess.run([mvdata_bin, "verify", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
