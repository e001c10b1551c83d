"""The built-in catalog: providers and models, read from ``catalog.toml`` (data, not code).

Every published limit carries the page it was read from and the date it was read; a
limit a provider does not publish is left unset, and the core learns it at run time.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["BatchSupport", "Catalog", "Limits", "ModelSpec", "ProviderSpec", "load_catalog", "parse_catalog"]

#: Limiter shapes (defined in nbfanout/core/shapes.py) and how output tokens are counted.
LIMITERS = ("token_bucket", "sliding_window", "fixed_window", "per_second")
TOKENS_COUNTED = ("max_tokens", "usage")
CAPABILITIES = frozenset({"tools", "parallel_tools", "vision", "transcription", "reasoning", "streaming"})
WIRES = frozenset({"openai", "anthropic", "gemini", "azure"})
#: Provider batch APIs (nbfanout/providers/batches.py): OpenAI's files + /batches (and the providers
#: that copy it), Anthropic's message batches, Gemini's batchGenerateContent, Mistral's /batch/jobs
#: and OpenRouter's inline /batches.
BATCH_APIS = ("openai", "anthropic", "gemini", "mistral", "openrouter")
#: The batch API a wire format's provider offers when a config says only ``batch = true``.
BATCH_API_OF_WIRE = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}


@dataclass(frozen=True, slots=True)
class BatchSupport:
    """A provider's batch API: which one, its price (a fraction of the live price), its per-batch
    limits (a larger map is split into several batches) and how often to ask for its status."""

    api: str  # one of BATCH_APIS
    price_factor: float = 0.5  # batch price / live price, for input and output alike
    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024  # one batch's input (a JSONL file, or a request body)
    poll_s: float = 10.0  # the first wait between status requests; it grows from there
    max_poll_s: float = 300.0  # and never beyond this
    source: str | None = None
    read_on: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits; None means unknown (learned at run time), never "unlimited"."""

    rpm: float | None = None
    tpm: float | None = None
    rpd: float | None = None
    ash: float | None = None  # audio seconds per hour (Groq's ASH)
    asd: float | None = None  # audio seconds per day (Groq's ASD)
    concurrency: int | None = None
    limiter: str | None = None  # token_bucket | sliding_window | fixed_window | per_second (core/shapes.py)
    tokens_counted: str | None = None  # "max_tokens" (charged at admission) or "usage" (settled to real use)
    source: str | None = None
    read_on: str | None = None
    note: str | None = None

    def merged(self, override: Limits | None) -> Limits:
        """These limits with every field that ``override`` sets taking precedence."""
        if override is None:
            return self
        pick = lambda a, b: b if b is not None else a  # noqa: E731
        return Limits(
            rpm=pick(self.rpm, override.rpm),
            tpm=pick(self.tpm, override.tpm),
            rpd=pick(self.rpd, override.rpd),
            ash=pick(self.ash, override.ash),
            asd=pick(self.asd, override.asd),
            concurrency=pick(self.concurrency, override.concurrency),
            limiter=pick(self.limiter, override.limiter),
            tokens_counted=pick(self.tokens_counted, override.tokens_counted),
            source=pick(self.source, override.source),
            read_on=pick(self.read_on, override.read_on),
            note=pick(self.note, override.note),
        )


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    id: str
    name: str
    wire: str
    base_url: str  # "" where every account has its own endpoint (Azure): then base_url_env says where it is
    key_env: tuple[str, ...]
    limits: Limits = Limits()
    docs: str | None = None
    max_audio_mb: float | None = None
    base_url_env: tuple[str, ...] = ()  # variables that hold the endpoint, read before base_url
    batch: BatchSupport | None = None  # None: no batch API (its models run live)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model. ``name`` is ``provider/model``; ``model_id`` is what the provider's API calls it."""

    name: str
    provider: str
    model_id: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_price: float | None = None  # USD per million input tokens
    output_price: float | None = None  # USD per million output tokens
    audio_price_per_minute: float | None = None
    capabilities: frozenset[str] = frozenset()
    pools: tuple[str, ...] = ()
    priority: int = 100
    limits: Limits = Limits()
    tokenizer: str | None = None  # tiktoken encoding name where known, e.g. "o200k_base"
    rejects: frozenset[str] = frozenset()  # request parameters the model refuses; left out, and said so
    batch_input_price: float | None = None  # USD per million tokens through the provider's batch API,
    batch_output_price: float | None = None  # where it is not the provider's price_factor times the live price
    source: str | None = None
    read_on: str | None = None
    note: str | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """USD for this many tokens, or None when a price is unknown."""
        if self.input_price is None or self.output_price is None:
            return None
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1_000_000

    def batch_cost(self, input_tokens: int, output_tokens: int, price_factor: float) -> float | None:
        """USD for this many tokens sent through the provider's batch API (None: a price is unknown)."""
        inp = self.batch_input_price if self.batch_input_price is not None else (
            None if self.input_price is None else self.input_price * price_factor)
        out = self.batch_output_price if self.batch_output_price is not None else (
            None if self.output_price is None else self.output_price * price_factor)
        if inp is None or out is None:
            return None
        return (input_tokens * inp + output_tokens * out) / 1_000_000


@dataclass(frozen=True, slots=True)
class Catalog:
    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, ModelSpec]
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _limits(raw: Any, where: str) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table of limits, found {type(raw).__name__}")
    unknown = set(raw) - {"rpm", "tpm", "rpd", "ash", "asd", "concurrency", "limiter", "tokens_counted", "source", "read_on", "note"}
    if unknown:
        raise ValueError(f"{where}: unknown limit keys {sorted(unknown)}")
    if raw.get("limiter") is not None and raw["limiter"] not in LIMITERS:
        raise ValueError(f"{where}.limiter: expected one of {list(LIMITERS)}, found {raw['limiter']!r}")
    if raw.get("tokens_counted") is not None and raw["tokens_counted"] not in TOKENS_COUNTED:
        raise ValueError(f"{where}.tokens_counted: expected one of {list(TOKENS_COUNTED)}, found {raw['tokens_counted']!r}")
    return Limits(**dict(raw))


_BATCH_FIELDS = {"api": str, "price_factor": float, "max_requests": int, "max_bytes": int, "poll_s": float,
                 "max_poll_s": float, "source": str, "read_on": str, "note": str}


def parse_batch(raw: Any, where: str, wire: str) -> BatchSupport | None:
    """A ``batch`` entry: ``true`` (the wire's batch API with its defaults), ``false``, or a table of
    BatchSupport's fields; raises ValueError naming the key and what it expects."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected true, false or a table (api, price_factor, max_requests, ...), "
                         f"found {type(raw).__name__}")
    unknown = set(raw) - set(_BATCH_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(_BATCH_FIELDS)}")
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _BATCH_FIELDS[key]
        ok = isinstance(value, str) if kind is str else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and (kind is float or float(value).is_integer()))
        if not ok:
            expected = "a string" if kind is str else f"a positive {'integer' if kind is int else 'number'}"
            raise ValueError(f"{where}.{key}: expected {expected}, found {value!r}")
        fields[key] = kind(value)
    api = fields.setdefault("api", BATCH_API_OF_WIRE.get(wire, ""))
    if api not in BATCH_APIS:
        raise ValueError(f"{where}.api: expected one of {list(BATCH_APIS)}, found {api!r}")
    if fields.get("price_factor", 0.5) > 1:
        raise ValueError(f"{where}.price_factor: expected a fraction of the live price (0 < f <= 1), "
                         f"found {fields['price_factor']!r}")
    return BatchSupport(**fields)


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    """Build a Catalog from parsed TOML; raises ValueError naming the offending entry."""
    providers: dict[str, ProviderSpec] = {}
    for pid, p in data.get("providers", {}).items():
        where = f"catalog providers.{pid}"
        if p.get("wire") not in WIRES:
            raise ValueError(f"{where}.wire: expected one of {sorted(WIRES)}, found {p.get('wire')!r}")
        providers[pid] = ProviderSpec(
            id=pid,
            name=p.get("name", pid),
            wire=p["wire"],
            base_url=p["base_url"].rstrip("/"),
            key_env=tuple(p.get("key_env", [f"{pid.upper()}_API_KEY"])),
            limits=_limits(p.get("limits"), f"{where}.limits"),
            docs=p.get("docs"),
            max_audio_mb=p.get("max_audio_mb"),
            base_url_env=tuple(p.get("base_url_env", ())),
            batch=parse_batch(p.get("batch"), f"{where}.batch", p["wire"]),
        )
    models: dict[str, ModelSpec] = {}
    pools: dict[str, list[str]] = {}
    for name, m in data.get("models", {}).items():
        where = f"catalog models.{name!r}"
        provider, _, model_id = name.partition("/")
        if provider not in providers or not model_id:
            raise ValueError(f"{where}: name must be '<provider>/<model>' with a known provider")
        caps = frozenset(m.get("capabilities", []))
        if caps - CAPABILITIES:
            raise ValueError(f"{where}.capabilities: unknown {sorted(caps - CAPABILITIES)}")
        spec = ModelSpec(
            name=name,
            provider=provider,
            model_id=m.get("model_id", model_id),
            context_window=m.get("context_window"),
            max_output_tokens=m.get("max_output_tokens"),
            input_price=m.get("input_price"),
            output_price=m.get("output_price"),
            audio_price_per_minute=m.get("audio_price_per_minute"),
            capabilities=caps,
            pools=tuple(m.get("pools", [])),
            priority=int(m.get("priority", 100)),
            limits=_limits(m.get("limits"), f"{where}.limits"),
            tokenizer=m.get("tokenizer"),
            rejects=frozenset(m.get("rejects", [])),
            batch_input_price=m.get("batch_input_price"),
            batch_output_price=m.get("batch_output_price"),
            source=m.get("source"),
            read_on=m.get("read_on"),
            note=m.get("note"),
        )
        models[name] = spec
        for pool in spec.pools:
            pools.setdefault(pool, []).append(name)
    return Catalog(providers=providers, models=models, pools={k: tuple(v) for k, v in pools.items()})


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The built-in catalog shipped with the package."""
    text = resources.files(__name__).joinpath("catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(tomllib.loads(text))
