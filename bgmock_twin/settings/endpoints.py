"""Where BGMock is: the seed simulator's service URLs, or the embedded emulator."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, field_validator, model_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, env, http_url


class Mode(StrEnum):
    AUTO = "auto"
    EMBEDDED = "embedded"
    EXTERNAL = "external"


class EndpointSettings(BaseModel):
    model_config = SLICE_CONFIG

    bank_a_url: str | None = Field(None, validation_alias=env("BANK_A_URL"))
    bank_b_url: str | None = Field(None, validation_alias=env("BANK_B_URL"))
    clearing_url: str | None = Field(None, validation_alias=env("CLEARING_SERVICE_URL"))
    mode: Mode = Field(Mode.AUTO, validation_alias=env("TWIN_MODE"))

    @field_validator("bank_a_url", "bank_b_url", "clearing_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url(value)

    @model_validator(mode="after")
    def _all_or_none(self) -> Self:
        urls = [self.bank_a_url, self.bank_b_url, self.clearing_url]
        if self.mode is Mode.EXTERNAL and not all(urls):
            raise ValueError(
                "TWIN_MODE=external needs BANK_A_URL, BANK_B_URL and CLEARING_SERVICE_URL"
            )
        if self.mode is Mode.AUTO and any(urls) and not all(urls):
            raise ValueError(
                "set all of BANK_A_URL, BANK_B_URL and CLEARING_SERVICE_URL, or none "
                "of them for embedded mode"
            )
        return self

    @property
    def embedded(self) -> bool:
        """True when the daemon runs the emulator instead of talking to a real BGMock."""
        if self.mode is Mode.AUTO:
            return not (self.bank_a_url and self.bank_b_url and self.clearing_url)
        return self.mode is Mode.EMBEDDED
