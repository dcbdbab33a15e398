"""One way to start Ray for every stage (design §4): a cluster when an address is given, else local."""

from __future__ import annotations

import os


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
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
