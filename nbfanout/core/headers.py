"""Rate-limit headers → RateSnapshot (limit / remaining / reset for requests and tokens)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RateSnapshot", "parse_rate_headers"]


@dataclass(frozen=True, slots=True)
class RateSnapshot:
    """What a provider's headers said about its limits; None where a header was absent.

    Reset values are seconds from the moment the headers were received.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__slots__)  # type: ignore[attr-defined]


def parse_rate_headers(provider: str, headers: Mapping[str, str] | None) -> RateSnapshot:
    """Read a provider's rate-limit headers. Placeholder body replaced by the taxonomy work."""
    raise NotImplementedError
