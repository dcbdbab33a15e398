"""An unreachable Ray address is one line naming the fix, not minutes of GCS retry warnings (docs/reliability.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mvforge.errors import UserError
from mvforge.raytools import check_reachable

MVDATA = Path(sys.executable).with_name("mvdata")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: a connection is refused


def test_an_address_nothing_listens_on_is_refused_and_a_listening_one_passes():
    port = _closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(UserError, match=rf"cannot reach Ray at {address} \(.*\); start the cluster"):
            check_reachable(address)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    check_reachable("auto")  # Ray's own lookup of a running cluster


def test_the_cli_says_it_in_one_line_at_once(tmp_path):
    port = _closed_port()
    done = subprocess.run(
        [str(MVDATA), "render", "demo", "--out", str(tmp_path / "r"), "--address", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: cannot reach Ray at 127.0.0.1:{port} (Connection refused); start the cluster there (ray start "
        "--head) or fix --address / RAY_ADDRESS; leave both unset for a local Ray"
    ]
