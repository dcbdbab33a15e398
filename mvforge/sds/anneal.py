"""Schedules of the SDS loop: timestep annealing and loss-weight ramps (docs/design.md §10.6, §10.7).

The official MVDream SDS anneals the range t is drawn from: ``min_step_percent`` 0.98 -> 0.02 and
``max_step_percent`` 0.98 -> 0.50, linearly over the first 8,000 steps (threestudio's ``C(value, step)`` with
``[start_step, start, end, end_step]`` = [0, 0.98, 0.02, 8000]); t is then drawn uniformly from
``[int(T * min), int(T * max)]``. Pure functions of the step, so resume needs no saved state for them.
"""

from __future__ import annotations


def linear_ramp(start: float, end: float, step: int, ramp_steps: int) -> float:
    """``start`` at step 0, ``end`` from ``ramp_steps`` on, linear in between (constant when ramp_steps <= 0)."""
    if ramp_steps <= 0:
        return end
    frac = min(max(step / ramp_steps, 0.0), 1.0)
    return start + (end - start) * frac


def timestep_range(
    step: int,
    num_train_timesteps: int,
    min_step_percent: tuple[float, float] = (0.98, 0.02),
    max_step_percent: tuple[float, float] = (0.98, 0.50),
    anneal_steps: int = 8000,
) -> tuple[int, int]:
    """Inclusive bounds (min_t, max_t) of the diffusion timestep at optimisation step ``step``.

    min_t = int(T * ramp(min_step_percent)), max_t = int(T * ramp(max_step_percent)), as the official guidance
    computes them. Raises ValueError when a percentage leaves [0, 1] or min > max.
    """
    lo = linear_ramp(*min_step_percent, step, anneal_steps)
    hi = linear_ramp(*max_step_percent, step, anneal_steps)
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"timestep range [{lo}, {hi}] must satisfy 0 <= min <= max <= 1")
    return int(num_train_timesteps * lo), int(num_train_timesteps * hi)
