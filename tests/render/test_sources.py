"""Source resolution: local files, dirs, globs, caption sidecars, uids; Objaverse metadata in the package's format."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from mvforge.errors import UserError
from mvforge.formats.renders import UID_RE
from mvforge.render.sources import (
    OBJAVERSE_SUBDIR,
    ObjaverseSelection,
    readable_name,
    resolve_sources,
    safe_uid,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "glb"


@pytest.fixture
def tree(tmp_path):
    """a/Duck.glb, b/Duck.glb (same stem), b/sub/my.chair v2.obj, notes.txt, odd.xyz."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "sub").mkdir(parents=True)
    shutil.copy(DATA / "Duck.glb", tmp_path / "a" / "Duck.glb")
    shutil.copy(DATA / "Duck.glb", tmp_path / "b" / "Duck.glb")
    (tmp_path / "b" / "sub" / "my.chair v2.obj").write_text("v 0 0 0\n")
    (tmp_path / "b" / "notes.txt").write_text("not a model")
    (tmp_path / "odd.xyz").write_bytes(b"\x00")
    return tmp_path


def test_directory_is_recursive_and_keeps_known_formats(tree):
    objs = resolve_sources([str(tree / "b")])
    assert sorted(Path(o.path).name for o in objs) == ["Duck.glb", "my.chair v2.obj"]
    chair = next(o for o in objs if o.ext == "obj")
    assert chair.uid == "my_chair_v2" and chair.kind == "local"
    assert chair.caption == "my chair v2"


def test_same_stem_gets_a_path_hash_independent_of_argument_order(tree):
    a, b = str((tree / "a" / "Duck.glb").resolve()), str((tree / "b" / "Duck.glb").resolve())
    one = {o.path: o.uid for o in resolve_sources([str(tree / "a"), str(tree / "b")])}
    two = {o.path: o.uid for o in resolve_sources([str(tree / "b"), str(tree / "a")])}
    assert one == two
    assert one[a] == "Duck"  # the first path in sort order keeps the plain stem
    assert one[b] == "Duck-" + hashlib.sha1(b.encode()).hexdigest()[:8]
    assert all(UID_RE.match(u) and "." not in u for u in one.values())


def test_glob_single_files_and_duplicates(tree):
    objs = resolve_sources([str(tree / "**" / "*.glb"), str(tree / "a" / "Duck.glb"), str(tree / "odd.xyz")])
    assert len(objs) == 3  # a/Duck.glb named twice is one object
    # A pattern keeps only 3D files (notes.txt is not an object), like a directory.
    assert sorted(Path(o.path).name for o in resolve_sources([str(tree / "b" / "*")])) == ["Duck.glb"]
    odd = next(o for o in objs if o.ext == "xyz")
    assert odd.uid == "odd"  # an unknown extension is still an object (it fails later as unsupported_format)


def test_caption_sidecars_csv_and_jsonl(tree):
    csv = tree / "caps.csv"
    csv.write_text(
        'uid,path,caption\nduck_a,a/Duck.glb,"a yellow rubber duck"\nmy_chair_v2,,"a wooden chair"\n'
    )
    objs = {o.path: o for o in resolve_sources([str(tree / "a"), str(tree / "b")], captions=csv)}
    duck_a = objs[str((tree / "a" / "Duck.glb").resolve())]
    assert (duck_a.uid, duck_a.caption) == ("duck_a", "a yellow rubber duck")
    # With a/Duck.glb renamed, b/Duck.glb no longer collides and keeps its plain stem.
    assert objs[str((tree / "b" / "Duck.glb").resolve())].uid == "Duck"
    chair = next(o for o in objs.values() if o.ext == "obj")
    assert chair.caption == "a wooden chair"

    jsonl = tree / "caps.jsonl"
    jsonl.write_text(json.dumps({"path": str(tree / "odd.xyz"), "caption": "a mystery"}) + "\n")
    (odd,) = resolve_sources([str(tree / "odd.xyz")], captions=jsonl)
    assert odd.caption == "a mystery" and odd.uid == "odd"


@pytest.mark.parametrize(
    "args, match",
    [
        (["/no/such/file.glb"], "neither demo"),
        (["/no/such/*.glb"], "matches no 3D file"),
        ([], "no SOURCE"),
    ],
)
def test_bad_sources_are_user_errors(args, match):
    with pytest.raises(UserError, match=match):
        resolve_sources(args)


def test_non_regular_files_are_named_and_never_opened(tree, capsys):
    """A FIFO (nothing writes to it: opening it would hang) and a broken link among the 3D files."""
    os.mkfifo(tree / "b" / "pipe.glb")
    (tree / "b" / "gone.glb").symlink_to(tree / "missing.glb")
    for source in (tree / "b", tree / "b" / "*.*"):
        objs = resolve_sources([str(source)])
        assert sorted(Path(o.path).name for o in objs) == (
            ["Duck.glb", "my.chair v2.obj"] if source == tree / "b" else ["Duck.glb"]
        )
        err = capsys.readouterr().err.strip()
        assert err == (
            f"warning: skipped 2 entries that are not regular files (first: {tree / 'b' / 'gone.glb'}, a broken "
            "symbolic link); 3D sources must be regular files"
        )
    # Given directly, the path exists: the error says what it is, not "neither ... an existing file".
    with pytest.raises(UserError, match=r"pipe.glb' exists but is a named pipe \(FIFO\); pass a regular 3D"):
        resolve_sources([str(tree / "b" / "pipe.glb")])
    with pytest.raises(UserError, match="gone.glb' exists but is a broken symbolic link"):
        resolve_sources([str(tree / "b" / "gone.glb")])


def test_objaverse_options_need_the_objaverse_source(tree):
    with pytest.raises(UserError, match="add the source `objaverse`"):
        resolve_sources([str(tree / "a")], objaverse=ObjaverseSelection(limit=3))


def test_bad_caption_sidecar(tree):
    bad = tree / "caps.csv"
    bad.write_text("uid,text\nx,y\n")
    with pytest.raises(UserError, match="caption column"):
        resolve_sources([str(tree / "a")], captions=bad)
    latin1 = tree / "latin1.csv"
    latin1.write_bytes("uid,caption\nx,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text .*save it as UTF-8"):
        resolve_sources([str(tree / "a")], captions=latin1)


def test_uid_and_caption_helpers():
    assert safe_uid("CesiumMilkTruck") == "CesiumMilkTruck"
    assert safe_uid("a.b c/d") == "a_b_c_d"
    assert safe_uid("...") == "object"
    assert readable_name("CesiumMilkTruck") == "cesium milk truck"
    assert readable_name("office_chair-02") == "office chair 02"


def test_demo_source_is_available_or_a_clear_error():
    try:
        from mvforge.assets import list_demo_objects  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="demo objects are not available"):
            resolve_sources(["demo"])
        return
    objs = resolve_sources(["demo"])
    assert len(objs) >= 12 and all(o.kind == "demo" and o.caption and Path(o.path).is_file() for o in objs)


# --- Objaverse ------------------------------------------------------------------------------------------

UIDS = {
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9": ("000-000", "Red Chair", ["chair", "furniture"]),
    "1b2c3d4e5f60718293a4b5c6d7e8f90a": ("000-000", "Old Mug", ["mug"]),
    "2c3d4e5f60718293a4b5c6d7e8f90a1b": ("000-001", "Desk Lamp", []),
}


def write_objaverse_metadata(root: Path) -> None:
    """Metadata files exactly as objaverse 0.1.7 stores them under BASE_PATH/hf-objaverse-v1."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {uid: f"glbs/{d}/{uid}.glb" for uid, (d, _, _) in UIDS.items()}
    with gzip.open(root / "object-paths.json.gz", "wt") as f:
        json.dump(paths, f)
    with gzip.open(root / "lvis-annotations.json.gz", "wt") as f:
        json.dump({"chair": [next(iter(UIDS))], "mug": list(UIDS)[1:2]}, f)
    (root / "metadata").mkdir(exist_ok=True)
    for d in {d for d, _, _ in UIDS.values()}:
        ann = {
            uid: {"uid": uid, "name": name, "tags": [{"name": t, "slug": t} for t in tags]}
            for uid, (dd, name, tags) in UIDS.items()
            if dd == d
        }
        with gzip.open(root / "metadata" / f"{d}.json.gz", "wt") as f:
            json.dump(ann, f)


def test_objaverse_from_cache_offline(tmp_path, monkeypatch):
    write_objaverse_metadata(tmp_path / OBJAVERSE_SUBDIR)
    # An address nothing listens on: the run must not need the network when the metadata is cached.
    offline = "http://127.0.0.1:9"
    objs = resolve_sources(["objaverse"], cache=tmp_path, base_url=offline)
    assert [o.uid for o in objs] == sorted(UIDS)
    chair = objs[0]
    assert chair.caption == "Red Chair, chair, furniture" and chair.tags == ("chair", "furniture")
    assert chair.url == f"{offline}/glbs/000-000/{chair.uid}.glb"
    assert chair.path == str(tmp_path / OBJAVERSE_SUBDIR / "glbs" / "000-000" / f"{chair.uid}.glb")
    assert chair.kind == "objaverse" and chair.ext == "glb"

    only_lamp = ObjaverseSelection(uids_file=_uid_file(tmp_path, [list(UIDS)[2]]))
    (lamp,) = resolve_sources(["objaverse"], cache=tmp_path, base_url=offline, objaverse=only_lamp)
    assert lamp.caption == "Desk Lamp" and lamp.tags == ()
    (mug,) = resolve_sources(
        ["objaverse"], cache=tmp_path, base_url=offline, objaverse=ObjaverseSelection(lvis="mug")
    )
    assert mug.name == "Old Mug"
    assert len(resolve_sources(["objaverse"], cache=tmp_path, objaverse=ObjaverseSelection(limit=2))) == 2
    with pytest.raises(UserError, match="LVIS category 'chiar'"):
        resolve_sources(["objaverse"], cache=tmp_path, objaverse=ObjaverseSelection(lvis="chiar"))

    # The objaverse package itself reads the same cache the same way (its paths are module globals).
    import objaverse

    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", str(tmp_path / OBJAVERSE_SUBDIR))
    assert objaverse.load_lvis_annotations()["mug"] == [mug.uid]
    assert objaverse.load_annotations([chair.uid])[chair.uid]["name"] == chair.name


def _uid_file(tmp_path: Path, uids: list[str]) -> Path:
    p = tmp_path / "uids.txt"
    p.write_text("# picked by hand\n" + "\n".join(uids) + "\n")
    return p


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_objaverse_metadata_is_fetched_into_the_cache_once(tmp_path):
    served = tmp_path / "hf"
    write_objaverse_metadata(served)
    handler = lambda *a, **k: _Files(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        cache = tmp_path / "cache"
        objs = resolve_sources(
            ["objaverse"], cache=cache, base_url=url, objaverse=ObjaverseSelection(lvis="chair")
        )
        assert [o.name for o in objs] == ["Red Chair"]
        got = sorted(str(p.relative_to(cache)) for p in cache.rglob("*.gz"))
        # Only the annotation file of the selected object's directory is fetched.
        names = ["lvis-annotations.json.gz", "metadata/000-000.json.gz", "object-paths.json.gz"]
        assert got == [f"{OBJAVERSE_SUBDIR}/{n}" for n in names]
    finally:
        httpd.shutdown()
        httpd.server_close()
    # Server gone: the cached metadata is enough.
    assert (
        len(
            resolve_sources(
                ["objaverse"], cache=cache, base_url=url, objaverse=ObjaverseSelection(lvis="chair")
            )
        )
        == 1
    )


def test_sidecar_uids_are_kept_and_stem_uids_make_way(tree):
    """A uid a sidecar row gives is never renamed; the file whose stem-derived uid collides with it is."""
    caps = tree / "caps.csv"
    # Spreadsheets save CSV with a byte-order mark; the first column must still read as "uid".
    caps.write_text("\ufeffuid,path,caption\nDuck,b/Duck.glb,the b duck\n", encoding="utf-8")
    objs = {o.path: o for o in resolve_sources([str(tree / "a"), str(tree / "b")], captions=caps)}
    a, b = str((tree / "a" / "Duck.glb").resolve()), str((tree / "b" / "Duck.glb").resolve())
    assert (objs[b].uid, objs[b].caption) == ("Duck", "the b duck")
    assert objs[a].uid == "Duck-" + hashlib.sha1(a.encode()).hexdigest()[:8]

    # A uid-only row captions the object that ends up with that uid, after collisions were resolved.
    caps.write_text("uid,path,caption\nDuck,,only the first duck\n")
    objs = {o.path: o for o in resolve_sources([str(tree / "a"), str(tree / "b")], captions=caps)}
    assert objs[a].caption == "only the first duck" and objs[b].caption == "duck"


@pytest.mark.parametrize(
    "text, match",
    [
        ("uid,path,caption\nx,a/Duck.glb\n", "row 1 needs a caption"),  # a short row: no caption cell
        ("uid,path,caption\nsame,a/Duck.glb,one\nsame,b/Duck.glb,two\n", "uid same is given to both"),
        ("uid,path,caption\nbad.uid,a/Duck.glb,x\n", "bad object uid 'bad.uid'"),
    ],
)
def test_bad_sidecar_rows_are_user_errors(tree, text, match):
    caps = tree / "caps.csv"
    caps.write_text(text)
    with pytest.raises(UserError, match=match):
        resolve_sources([str(tree / "a"), str(tree / "b")], captions=caps)
