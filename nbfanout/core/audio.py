"""Transcription through the audio pool: Groq first when it has a key, then round-robin over the rest,
each request admitted by the same budgets as chat (RPM, RPD, concurrency, cooldowns) and by the
audio seconds per hour / day a provider counts (Groq's ASH / ASD)."""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError
from nbfanout.core.limits import CapacityError, Option
from nbfanout.core.results import Attempt
from nbfanout.core.rotation import KEY_FAULTS
from nbfanout.providers import adapter_for
from nbfanout.providers.base import Endpoint, TranscriptionRequest

if TYPE_CHECKING:
    from nbfanout.core.fanout import Fanout

__all__ = ["Transcriber", "Transcription", "audio_seconds"]

#: Bytes per second assumed where a file's header does not say its length: 128 kbit/s, the
#: usual MP3 / AAC rate (speech at lower rates is longer than this reckons; the answer corrects it).
ASSUMED_BYTES_PER_S = 16_000.0


def audio_seconds(data: bytes) -> tuple[float, bool]:
    """The length of an audio file in seconds, and whether its header stated it (WAV, FLAC) or it was
    estimated from its size at ``ASSUMED_BYTES_PER_S``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data)) as w:
                if w.getframerate() > 0:
                    return w.getnframes() / w.getframerate(), True
        except (wave.Error, EOFError):
            pass
    if data[:4] == b"fLaC" and len(data) >= 26:
        # STREAMINFO, the first metadata block: 20 bits of sample rate, then 8 bits, then 36 bits of samples
        packed = int.from_bytes(data[18:26], "big")
        rate, samples = packed >> 44, packed & ((1 << 36) - 1)
        if rate > 0 and samples > 0:
            return samples / rate, True
    return len(data) / ASSUMED_BYTES_PER_S, False


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    model: str
    attempts: tuple[Attempt, ...]
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Transcriber:
    """Sends audio files to the audio pool of a Fanout, rotating the starting model between calls."""

    def __init__(self, fx: Fanout) -> None:
        self.fx = fx
        self._turn = 0

    async def transcribe(self, path: str | Path, *, language: str | None, prompt: str | None,
                         models: Sequence[str] | None) -> Transcription:
        config = self.fx.config
        data = Path(path).read_bytes()
        size_mb = len(data) / (1024 * 1024)
        names = list(models) if models else list(config.pools.get("audio", ()))
        for n in names:
            config.model(n)
        order = self._order(names, size_mb)
        if not order:
            no_key = not any(config.providers[config.models[n].provider].keys for n in names)
            info = ErrorInfo(ErrorCategory.MISSING_KEY if no_key else ErrorCategory.BAD_REQUEST, False,
                             f"no audio model can take {Path(path).name} ({size_mb:.1f} MB): "
                             + ", ".join(self._why_not(n) for n in names))
            return Transcription("", "", (), info)
        return await self._send(Path(path).name, data, language, prompt, order)

    async def _send(self, filename: str, data: bytes, language: str | None, prompt: str | None,
                    order: list[str]) -> Transcription:
        """Through the same admission as chat: each (model, key) only when its budgets have room and
        no cooldown holds it; a refusal cools that scope down and the next option is taken."""
        fx = self.fx
        clock, policy, router = fx.clock, fx.retry, fx.router
        seconds = math.ceil(audio_seconds(data)[0])  # whole seconds, as they are counted
        http = fx._http()
        req_id = f"audio:{filename}"
        attempts: list[Attempt] = []
        t0 = clock.now()
        last: ErrorInfo | None = None
        for attempt_no in range(1, policy.max_attempts + 1):
            choices = router.choices(order, frozenset())
            if not choices:
                break
            try:
                reservation = await fx.budgets.acquire([Option(c.budgets, 0.0, audio_s=seconds) for c in choices],
                                                       policy.max_wait_s)
            except CapacityError as exc:
                info = ErrorInfo(ErrorCategory.RATE_LIMIT, False, f"no audio model has capacity within max_wait_s: "
                                 f"the soonest waits {exc.wait_s:.0f}s ({exc.reason})", retry_after_s=exc.wait_s)
                return Transcription("", order[0], tuple(attempts), info)
            choice = choices[reservation.index]
            spec, provider = choice.model, choice.provider
            endpoint = Endpoint(provider=provider.id, base_url=provider.base_url, api_key=choice.key.value,
                                params=dict(provider.params),
                                headers=dict(provider.headers))
            start = clock.now() - t0
            async with reservation:
                try:
                    with http.lease() as client:
                        resp = await adapter_for(provider.wire).transcribe(
                            client, endpoint, TranscriptionRequest(spec.model_id, filename, data, language, prompt),
                            timeout=policy.timeout_s)
                    if resp.duration_s is not None:  # the provider's own count of the audio
                        reservation.settle_audio(math.ceil(resp.duration_s))
                except ProviderError as exc:
                    resp, last = None, exc.info
            if resp is not None:
                router.learn_headers(choice, resp.rate, reservation)
                attempts.append(Attempt(spec.name, choice.key_id, start, clock.now() - t0, "ok", resp.status))
                self._turn += 1
                return Transcription(resp.text, spec.name, tuple(attempts))
            assert last is not None
            attempts.append(Attempt(spec.name, choice.key_id, start, clock.now() - t0, last.category.value,
                                    last.status, last.message))
            retry, wait, _ = policy.decide(attempt_no, last, clock.now() - t0)
            router.learn_failure(choice, last, reservation, wait, fx._emit, req_id)
            if last.category in KEY_FAULTS or last.category in (ErrorCategory.RATE_LIMIT, ErrorCategory.OVERLOADED):
                continue  # that key or scope is out (or cooling down): admission picks the next option
            if not retry:
                break
            router.model_key_budget(spec, choice.key).cool_down(wait, f"{last.category.value}: retry in {wait:.1f}s")
        return Transcription("", attempts[-1].model if attempts else order[-1], tuple(attempts), last)

    def _why_not(self, name: str) -> str:
        provider = self.fx.config.providers[self.fx.config.models[name].provider]
        if not provider.keys:
            return f"{name}: no key (set {' or '.join(provider.key_vars)})"
        return f"{name}: file over its {provider.max_audio_mb:g} MB limit"

    def _order(self, names: list[str], size_mb: float) -> list[str]:
        config = self.fx.config

        def usable(n: str) -> bool:
            provider = config.providers[config.models[n].provider]
            return bool(provider.keys) and (provider.max_audio_mb is None or size_mb <= provider.max_audio_mb)

        ok = [n for n in names if usable(n)]
        groq = [n for n in ok if n.startswith("groq/")]
        rest = [n for n in ok if not n.startswith("groq/")]
        if rest:
            k = self._turn % len(rest)
            rest = rest[k:] + rest[:k]
        return groq + rest
