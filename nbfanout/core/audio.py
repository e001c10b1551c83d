"""Transcription through the audio pool: Groq first when it has a key, then round-robin over the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError
from nbfanout.core.results import Attempt
from nbfanout.core.rotation import KEY_FAULTS
from nbfanout.providers import adapter_for
from nbfanout.providers.base import Endpoint, TranscriptionRequest

if TYPE_CHECKING:
    from nbfanout.core.fanout import Fanout

__all__ = ["Transcriber", "Transcription"]


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
        attempts: list[Attempt] = []
        clock = self.fx.clock
        client = self.fx._client()
        t0 = clock.now()
        last: ErrorInfo | None = None
        for name in order:
            spec = config.models[name]
            provider = config.providers[spec.provider]
            for key in provider.keys:
                start = clock.now() - t0
                endpoint = Endpoint(provider=provider.id, base_url=provider.base_url, api_key=key.value,
                                    headers=dict(provider.headers))
                try:
                    resp = await adapter_for(provider.wire).transcribe(
                        client, endpoint, TranscriptionRequest(spec.model_id, Path(path).name, data, language, prompt),
                        timeout=self.fx.retry.timeout_s)
                except ProviderError as exc:
                    last = exc.info
                    attempts.append(Attempt(name, key.id, start, clock.now() - t0, exc.info.category.value,
                                            exc.info.status, exc.info.message))
                    if exc.info.category in KEY_FAULTS:
                        continue
                    break
                attempts.append(Attempt(name, key.id, start, clock.now() - t0, "ok", resp.status))
                self._turn += 1
                return Transcription(resp.text, name, tuple(attempts))
        return Transcription("", order[-1], tuple(attempts), last)

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
