"""What a simulation is asked to do (``SimulationSpec``): its size, rate profile,
payment mix and name, as kept in the ledger so a restarted twin resumes it; and how
a duration becomes a count (``sized_by_duration``: the payments the profile has due
within it, the integral in closed form).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Literal

from bgmock_twin.errors import InvalidRequest
from bgmock_twin.tracking import mix, pacing
from bgmock_twin.tracking.lifecycle import FAILURE_KINDS, Channel, Kind
from bgmock_twin.tracking.load import LoadProfile

Profile = Literal["constant", "ramp", "spike", "wave"]
MAX_COUNT = 100_000  # payments in one simulation, however it is sized


class InvalidSimulation(InvalidRequest):
    """A spec whose rates and durations do not make a load profile."""


@dataclass(frozen=True, slots=True)
class SimulationSpec:
    count: int
    amount_min: Decimal
    amount_max: Decimal
    profile: Profile = "constant"
    rate: float | None = None
    delay: float | None = None
    ramp_from: float | None = None
    ramp_to: float | None = None
    ramp_duration: float | None = None
    spike_rate: float | None = None
    spike_start: float | None = None
    spike_duration: float | None = None
    wave_base: float | None = None
    wave_amplitude: float | None = None
    wave_period: float | None = None
    duration: float | None = None  # seconds asked for, when sized by a duration
    channel: Channel = Channel.REST
    direction: mix.Direction = "both"
    failure_share: float = 0.0
    failure_kinds: tuple[Kind, ...] = FAILURE_KINDS
    name: str | None = None

    def rate_profile(self) -> pacing.Profile:
        """The rate profile; raises ``ValueError`` if the parameters do not fit it."""
        if self.profile == "wave":
            if self.wave_base is None or self.wave_amplitude is None or \
                    self.wave_period is None:
                raise ValueError("a wave needs base_rate, amplitude and period_seconds")
            return pacing.wave(self.wave_base, self.wave_amplitude, self.wave_period)
        if self.profile == "ramp":
            if self.ramp_from is None or self.ramp_to is None or self.ramp_duration is None:
                raise ValueError("a ramp needs ramp_from, ramp_to and ramp_duration")
            return pacing.ramp(self.ramp_from, self.ramp_to, self.ramp_duration)
        base = self.base_rate()
        if self.profile == "spike":
            if self.spike_rate is None or self.spike_start is None or \
                    self.spike_duration is None:
                raise ValueError("a spike needs spike_rate, spike_start and spike_duration")
            return pacing.spike(base, self.spike_rate, self.spike_start, self.spike_duration)
        return pacing.constant(base)

    def base_rate(self) -> float:
        if (self.rate is None) == (self.delay is None):
            raise ValueError("give exactly one of rate (payments/s) and delay (seconds)")
        return self.rate if self.rate is not None else 1 / float(self.delay or 1)

    def load_profile(self) -> LoadProfile:
        return LoadProfile(
            amount_min=self.amount_min, amount_max=self.amount_max, channel=self.channel,
            direction=self.direction, failure_share=self.failure_share,
            failure_kinds=self.failure_kinds,
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["amount_min"] = format(self.amount_min, "f")
        data["amount_max"] = format(self.amount_max, "f")
        data["channel"] = self.channel.value
        data["failure_kinds"] = [k.value for k in self.failure_kinds]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> SimulationSpec:
        data = json.loads(text)
        data["amount_min"] = Decimal(data["amount_min"])
        data["amount_max"] = Decimal(data["amount_max"])
        data["channel"] = Channel(data["channel"])
        data["failure_kinds"] = tuple(Kind(k) for k in data["failure_kinds"])
        return cls(**data)

    def fields(self) -> dict[str, Any]:
        """The fields that are set, as JSON values (money as strings)."""
        data: dict[str, Any] = json.loads(self.to_json())
        return {k: v for k, v in data.items() if v is not None}


def sized_by_duration(spec: SimulationSpec, seconds: float) -> SimulationSpec:
    """``spec`` with the count its profile has due within ``seconds``; raises
    ``InvalidSimulation`` when the profile does not fit or the count is too large."""
    try:
        count = pacing.count_for_duration(spec.rate_profile(), seconds)
    except ValueError as exc:
        raise InvalidSimulation(str(exc)) from None
    if count > MAX_COUNT:
        raise InvalidSimulation(f"{seconds:g} s at this profile is {count} payments; a "
                                f"simulation sends at most {MAX_COUNT}")
    return dataclasses.replace(spec, count=count, duration=seconds)
