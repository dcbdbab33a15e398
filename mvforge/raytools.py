"""One way to start Ray for every stage (design §4): a cluster when an address is given, else local."""

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
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
