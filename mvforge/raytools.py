"""One way to start Ray for every stage (docs/design.md §4): a cluster when an address is given, else
local."""

from __future__ import annotations

import logging
import os

# Ray >= 2.59 turns token authentication on for every new local cluster and logs a notice about it at each
# start. Keep the protection (a local Ray's GCS and raylet listen on all interfaces) and drop only the notice;
# RAY_AUTH_MODE=disabled would remove the protection.
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``) when set, else start a local Ray with ``num_cpus`` CPUs.

    Idempotent: a driver that already initialised Ray (a test, a notebook) keeps its instance.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers inherit the driver's environment; keep Ray quiet and off the network (no usage stats, no dashboard).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise UserError unless a TCP connection to the ``host:port`` of ``address`` (``host:port`` or
    ``ray://host:port``) opens within ``timeout_s``: ``ray.init`` retries an unreachable GCS for minutes while
    logging warnings. ``auto``, ``local`` and other forms are left to Ray."""
    import socket

    from mvforge.errors import UserError

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(
            f"cannot reach Ray at {address} ({e.strerror or type(e).__name__}); start the cluster there "
            "(ray start --head) or fix --address / RAY_ADDRESS; leave both unset for a local Ray"
        ) from None


def bounded_map(submit, items, max_in_flight: int):
    """Run ``submit(item) -> ObjectRef`` over ``items`` with at most ``max_in_flight`` tasks at once, yielding
    ``(item, ref)`` as each finishes (completion order), for the caller to ``ray.get`` and handle errors.

    The fan-out loop of render (objects) and shard (files); `mvtrain sds --prompts` keeps its own loop in
    ``sds/ray_prompts.py``, which also cancels tasks past a timeout. Holding every ref at once
    would let Ray queue 10⁶ tasks on the driver, and ``ray.wait`` over a bounded set stays O(in flight).
    If the caller stops early (an exception, a ``break``), the tasks still in flight are cancelled.
    Raises ValueError when ``max_in_flight < 1``.
    """
    import ray

    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    pending = iter(items)
    in_flight: dict = {}
    exhausted = False
    try:
        while True:
            while not exhausted and len(in_flight) < max_in_flight:
                item = next(pending, _END)
                if item is _END:
                    exhausted = True
                    break
                in_flight[submit(item)] = item
            if not in_flight:
                return
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                yield in_flight.pop(ref), ref
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)


_END = object()
