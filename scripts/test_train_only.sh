#!/usr/bin/env bash
# The training-only environment's test run (docs/install.md): no bpy, numpy >= 2. Asserts, inside this run, that the
# environment really is that, that at least MIN_PASSED named tests passed, and that none was skipped because an
# import was missing (a skip would hide exactly the breakage this run exists to catch).
set -euo pipefail
PY=${1:-.venv-train/bin/python}
MIN_PASSED=${MIN_PASSED:-150}
REPORT=$(mktemp -d)/junit.xml

"$PY" - <<'PY'
import importlib.util, sys
import numpy
major = int(numpy.__version__.split(".")[0])
assert major >= 2, f"train-only env must have numpy >= 2, has {numpy.__version__}"
assert importlib.util.find_spec("bpy") is None, "train-only env must not have bpy"
print(f"train-only env: numpy {numpy.__version__}, no bpy, python {sys.version.split()[0]}")
PY

# The tests a training node must pass: the model layer, the trainer, the shard format and loader, the shared
# layers (cameras, config, formats), and the package rule.
TESTS=(tests/train tests/shards tests/models tests/sds tests/eval tests/test_cameras.py tests/test_config.py tests/test_architecture.py tests/cli)
[ -d tests/formats ] && TESTS+=(tests/formats)
# The slow Ray multi-worker tests already ran in `make test`; here the environment is what is under test.
MVFORGE_TRAIN_ONLY=1 "$PY" -m pytest -q -rs -m "not slow" "${TESTS[@]}" --junitxml "$REPORT"

"$PY" - "$REPORT" "$MIN_PASSED" <<'PY'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = root.iter("testcase")
passed, bad_skips = [], []
for c in cases:
    outcome = [ch for ch in c if ch.tag in ("failure", "error", "skipped")]
    if not outcome:
        passed.append(f"{c.get('classname')}::{c.get('name')}")
    for ch in outcome:
        msg = (ch.get("message") or "") + (ch.text or "")
        if ch.tag == "skipped" and ("No module named" in msg or "could not import" in msg or "import" in msg.lower()):
            bad_skips.append(f"{c.get('name')}: {msg.strip()[:200]}")
assert not bad_skips, "tests skipped for a missing import in the train-only env:\n" + "\n".join(bad_skips)
assert len(passed) >= int(sys.argv[2]), f"only {len(passed)} tests passed in the train-only env (want >= {sys.argv[2]})"
print(f"train-only env: {len(passed)} named tests passed, none skipped for a missing import")
PY
