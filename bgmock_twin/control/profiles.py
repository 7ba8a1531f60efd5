"""The load-profile part of a ``POST /api/v1/simulations`` body, from the
``simulate`` flags, with a plain error naming the flags a profile is missing
before anything is sent."""

from __future__ import annotations

from typing import Any

PROFILES = ("constant", "ramp", "spike", "wave")


def profile_fields(
    profile: str, *, rate: float | None = None, delay: float | None = None,
    ramp_from: float | None = None, ramp_to: float | None = None,
    ramp_seconds: float | None = None, spike_rate: float | None = None,
    spike_start: float | None = None, spike_seconds: float | None = None,
    wave_base: float | None = None, wave_amplitude: float | None = None,
    wave_period: float | None = None,
) -> dict[str, Any]:
    """The body's profile fields; raises ``ValueError`` naming the missing flags."""
    body: dict[str, Any] = {"profile": profile}
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    if rate is not None:
        body["rate"] = rate
    if delay is not None:
        body["delay"] = delay
    if profile == "ramp":
        if ramp_from is None or ramp_to is None or ramp_seconds is None:
            raise ValueError("--profile ramp needs --ramp-from, --ramp-to and --ramp-duration")
        body["ramp"] = {"fromRate": ramp_from, "toRate": ramp_to, "duration": ramp_seconds}
    elif profile == "wave":
        if wave_base is None or wave_amplitude is None or wave_period is None:
            raise ValueError(
                "--profile wave needs --wave-base, --wave-amplitude and --wave-period")
        body["wave"] = {"baseRate": wave_base, "amplitude": wave_amplitude,
                        "periodSeconds": wave_period}
    elif rate is None and delay is None:
        raise ValueError(f"--profile {profile} needs --rate or --delay")
    if profile == "spike":
        if spike_rate is None or spike_start is None or spike_seconds is None:
            raise ValueError(
                "--profile spike needs --spike-rate, --spike-start and --spike-duration")
        body["spike"] = {"rate": spike_rate, "start": spike_start, "duration": spike_seconds}
    return body
