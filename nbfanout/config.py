"""Configuration: ``nbfanout.toml`` (or a dict of the same shape) merged over the catalog, plus keys.

Every problem is reported at once, each naming the file, the key, what was found and
what was expected. API keys come from the config (``api_key``), the variables named in
``api_key_env``, the catalog's conventional variables, and ``PROVIDER_API_KEY`` /
``PROVIDER_API_KEY_1..N``; they are never shown beyond their last four characters.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nbfanout.catalog import (
    CAPABILITIES,
    LIMITERS,
    TOKENS_COUNTED,
    WIRES,
    BatchSupport,
    Catalog,
    Limits,
    ModelSpec,
    ProviderSpec,
    load_catalog,
    parse_batch,
)
from nbfanout.core.errors import ConfigError, UnknownModelError, UsageError
from nbfanout.core.store import ON_UNAVAILABLE, REDIS_URL_ENV, SharedConfig
from nbfanout._secrets import mask, redact, remember

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ApiKey",
    "Config",
    "Defaults",
    "ProviderConfig",
    "load_config",
    "parse_provider_rpm",
]

DEFAULT_FILE = "nbfanout.toml"
BUILT_IN = "built-in defaults (no nbfanout.toml)"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A secret and where it came from; ``str()`` and ``repr()`` show only ``…`` + last four."""

    value: str = field(repr=False)
    origin: str  # the variable name, or "config"

    def __post_init__(self) -> None:
        remember(self.value)

    @property
    def id(self) -> str:
        return mask(self.value)

    @property
    def digest(self) -> str:
        """A one-way name for the key that is the same in every process: how a shared store tells keys
        apart (two keys may end in the same four characters) without holding them."""
        return hashlib.sha256(self.value.encode("utf-8")).hexdigest()[:20]

    def __repr__(self) -> str:
        return f"ApiKey({self.id} from {self.origin})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Defaults:
    """The ``[defaults]`` table: run-wide settings."""

    concurrency: int = 16
    timeout_s: float = 120.0
    max_attempts: int = 6
    deadline_s: float | None = None
    max_rotations: int = 8
    max_backoff_s: float = 30.0
    max_wait_s: float = 600.0
    base_backoff_s: float = 0.5
    provider_order: tuple[str, ...] = ()
    cache: bool = False
    cache_path: str | None = None
    state_path: str | None = None
    learn_limits: bool = True
    learned_ttl_s: float = 86400.0
    downscale_images: bool = True


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider, resolved: where it lives, its keys and its limits."""

    id: str
    name: str
    wire: str
    base_url: str
    keys: tuple[ApiKey, ...]
    key_vars: tuple[str, ...]  # the variables a user would set, for "missing key" messages
    limits: Limits = Limits()
    headers: Mapping[str, str] = field(default_factory=dict)
    max_audio_mb: float | None = None
    fallback: tuple[str, ...] = ()  # where a request goes when this provider cannot answer, in order
    params: Mapping[str, str] = field(default_factory=dict)  # query parameters of every call (Azure's api-version)
    endpoint_vars: tuple[str, ...] = ()  # variables that can hold base_url, for "no endpoint" messages (Azure)
    batch: BatchSupport | None = None  # its batch API (catalog or ``batch = ...``); None: its models run live

    @property
    def has_key(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a run needs: defaults, providers with keys, models, pools."""

    defaults: Defaults
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelSpec]
    pools: Mapping[str, tuple[str, ...]]
    source: str = BUILT_IN  # the file's path, a config dict's name, or BUILT_IN
    shared: SharedConfig | None = None  # [shared]: budgets kept in Redis with every other process using it

    def model(self, name: str) -> ModelSpec:
        """The model called ``name``; UnknownModelError lists the closest known names."""
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(name, suggest(name, self.models)) from None

    def __repr__(self) -> str:
        keyed = sum(1 for p in self.providers.values() if p.has_key)
        return (
            f"Config(source={self.source!r}, providers={len(self.providers)} ({keyed} with keys), "
            f"models={len(self.models)}, pools={sorted(self.pools)})"
        )


def suggest(name: str, known: Mapping[str, Any] | list[str], n: int = 5) -> tuple[str, ...]:
    """Close names for a mistyped model: fuzzy matches, then same model id under other providers."""
    names = list(known)
    out = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    tail = name.rsplit("/", 1)[-1].lower()
    out += [k for k in names if k.lower().endswith("/" + tail) and k not in out]
    if len(out) < n:
        by_tail = {k.rsplit("/", 1)[-1].lower(): k for k in names}
        out += [by_tail[t] for t in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.6) if by_tail[t] not in out]
    return tuple(out[:n])


# --- validation --------------------------------------------------------------------------

_NUM = (int, float)


class _Problems:
    """Collects every config problem so the user sees them all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, found: Any, expected: str) -> None:
        shown = _shown(found)
        self.items.append(f"{self.source}: {key}: expected {expected}, found {shown}")

    def raise_if_any(self) -> None:
        if self.items:
            head = f"{len(self.items)} problem(s) in the nbfanout configuration:\n  - "
            raise ConfigError(head + "\n  - ".join(self.items), problems=tuple(self.items))


#: The api-version sent to Azure OpenAI when the config names none: the latest GA version of the
#: data-plane inference API (learn.microsoft.com/azure/ai-services/openai/reference, 2024-10-21).
AZURE_API_VERSION = "2024-10-21"


def _params(raw: Mapping[str, Any], wire: str) -> dict[str, str]:
    if wire != "azure":
        return {}
    return {"api-version": raw.get("api_version", AZURE_API_VERSION)}


def _shown(value: Any) -> str:
    """A found value for an error message; anything that could be a secret is described, not shown."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    if isinstance(value, str):
        secret_like = len(value) >= 20 or redact(value) != value
        return f"a {len(value)}-character string" if secret_like else f"{value!r} (string)"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"{value!r} ({type(value).__name__})"


def _check(p: _Problems, table: Mapping[str, Any], where: str, spec: Mapping[str, tuple[Any, str]]) -> dict[str, Any]:
    """Type-check ``table`` against ``spec`` ({key: (types or predicate, description)})."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            p.add(f"{where}.{key}", value, f"one of the known keys {sorted(spec)}{hint}")
            continue
        check, expected = spec[key]
        ok = check(value)
        if ok:
            out[key] = value
        else:
            p.add(f"{where}.{key}", value, expected)
    return out


def _is(kind: type) -> Any:
    return lambda v: isinstance(v, kind) and (kind is bool or not isinstance(v, bool))


def _positive(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _at_least_one(v: Any) -> bool:
    return _positive(v) and v >= 1


def _env_names(v: Any) -> bool:
    names = [v] if isinstance(v, str) else v
    return isinstance(names, list) and all(isinstance(n, str) and re.fullmatch(r"[A-Z_][A-Z0-9_]*", n) for n in names)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _str_or_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _url(v: Any) -> bool:
    return isinstance(v, str) and re.match(r"^https?://[^\s/]+", v) is not None


_LIMIT_SPEC: dict[str, tuple[Any, str]] = {
    "rpm": (_at_least_one, "a finite number ≥ 1 (requests per minute)"),
    "tpm": (_at_least_one, "a finite number ≥ 1 (tokens per minute)"),
    "rpd": (_at_least_one, "a finite number ≥ 1 (requests per day)"),
    "ash": (_at_least_one, "a finite number ≥ 1 (seconds of audio per hour, as Groq counts transcriptions)"),
    "asd": (_at_least_one, "a finite number ≥ 1 (seconds of audio per day)"),
    "concurrency": (_positive_int, "a positive integer (requests in flight)"),
    "limiter": (lambda v: isinstance(v, str) and v in LIMITERS, f"one of {list(LIMITERS)} (how the provider counts the limit)"),
    "tokens_counted": (lambda v: isinstance(v, str) and v in TOKENS_COUNTED,
                       f"one of {list(TOKENS_COUNTED)} (what the provider charges against TPM)"),
}

_DEFAULTS_SPEC: dict[str, tuple[Any, str]] = {
    "concurrency": (_positive_int, "a positive integer"),
    "timeout_s": (_positive, "a positive number of seconds"),
    "max_attempts": (_positive_int, "a positive integer"),
    "deadline_s": (_positive, "a positive number of seconds"),
    "max_rotations": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "max_backoff_s": (_positive, "a positive number of seconds"),
    "max_wait_s": (_positive, "a positive number of seconds (longest provider-requested wait to honour)"),
    "base_backoff_s": (_positive, "a positive number of seconds"),
    "provider_order": (_str_list, "a list of provider ids"),
    "cache": (_is(bool), "true or false"),
    "cache_path": (_is(str), "a file path"),
    "state_path": (_is(str), "a file path"),
    "learn_limits": (_is(bool), "true or false"),
    "learned_ttl_s": (_positive, "a positive number of seconds (how long a learned limit is trusted)"),
    "downscale_images": (_is(bool), "true or false (make images too large for a provider smaller, for it only)"),
}

_PROVIDER_SPEC: dict[str, tuple[Any, str]] = {
    **_LIMIT_SPEC,
    "kind": (lambda v: isinstance(v, str) and v in WIRES, f"one of {sorted(WIRES)} (the wire format)"),
    "name": (_is(str), "a display name"),
    "base_url": (_url, "an http(s) URL such as 'http://127.0.0.1:8765/v1'"),
    "api_key": (_str_or_list, "a key string or a list of key strings"),
    "api_key_env": (_env_names, "the NAME of an environment variable such as OPENAI_API_KEY (not the key itself), or a list of names"),
    "models": (_str_list, "a list of model ids served by this provider"),
    "headers": (lambda v: isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values()), "a table of strings"),
    "max_audio_mb": (_positive, "a positive number of megabytes"),
    "fallback": (_str_list, "a list of provider ids to fail over to, in order"),
    "api_version": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9A-Za-z.\-]+", v) is not None,
                    "an Azure OpenAI api-version such as '2024-10-21'"),
    "published_limits": (_is(bool), "true or false (false: ignore the catalog's published limits for this provider)"),
    "catalog_models": (_is(bool), "true or false (false: only the models listed in `models`, none of the catalog's others)"),
    "batch": (lambda v: isinstance(v, (bool, Mapping)),
              "true, false, or a table (api, price_factor, max_requests, max_bytes, poll_s, max_poll_s)"),
}

_MODEL_SPEC: dict[str, tuple[Any, str]] = {
    **_LIMIT_SPEC,
    "context_window": (_positive_int, "a positive integer (tokens)"),
    "max_output_tokens": (_positive_int, "a positive integer (tokens)"),
    "input_price": (lambda v: isinstance(v, _NUM) and not isinstance(v, bool) and v >= 0, "USD per million tokens (>= 0)"),
    "output_price": (lambda v: isinstance(v, _NUM) and not isinstance(v, bool) and v >= 0, "USD per million tokens (>= 0)"),
    "capabilities": (lambda v: _str_list(v) and set(v) <= CAPABILITIES, f"a list drawn from {sorted(CAPABILITIES)}"),
    "pools": (_str_list, "a list of pool names"),
    "priority": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer (lower is preferred)"),
    "model_id": (_is(str), "the provider's own model id"),
    "rejects": (_str_list, "a list of request parameter names the model refuses, e.g. [\"temperature\"]"),
    "batch_input_price": (lambda v: isinstance(v, _NUM) and not isinstance(v, bool) and v >= 0, "USD per million tokens (>= 0)"),
    "batch_output_price": (lambda v: isinstance(v, _NUM) and not isinstance(v, bool) and v >= 0, "USD per million tokens (>= 0)"),
}

_SHARED_SPEC: dict[str, tuple[Any, str]] = {
    "url": (lambda v: isinstance(v, str) and v.split("://", 1)[0] in ("redis", "rediss", "unix"),
            "a Redis URL: redis://[user:password@]host:port/db, rediss://... (TLS) or unix:///path"),
    "on_unavailable": (lambda v: v in ON_UNAVAILABLE, '"fail" (the run fails at once) or "local" (warn, keep budgets in process)'),
    "lease_s": (_positive, "a positive number of seconds (how soon a dead process's slots are freed)"),
    "namespace": (lambda v: isinstance(v, str) and re.fullmatch(r"[\w.\-]+", v) is not None,
                  "a prefix for the store's keys: letters, digits, '_', '.', '-'"),
}

_TOP_SPEC: dict[str, tuple[Any, str]] = {
    "defaults": (_is(Mapping), "a table"),
    "providers": (_is(Mapping), "a table of [providers.<id>] tables"),
    "models": (_is(Mapping), 'a table of [models."provider/model"] tables'),
    "pools": (_is(Mapping), "a table of [pools.<name>] tables"),
    "name": (_is(str), "a display name for this configuration (shown by status)"),
    "shared": (_is(Mapping), "a table: [shared] url = \"redis://host:port/0\""),
}


def _endpoint(spec: ProviderSpec | None, env: Mapping[str, str]) -> str:
    """A catalog provider's base URL: from its endpoint variable where it has one (Azure), else the catalog's."""
    if spec is None:
        return ""
    return next((env[v] for v in spec.base_url_env if env.get(v)), spec.base_url)


def _env_prefix(provider: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", provider).upper()


def _listify(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def _gather_keys(
    provider: str, raw: Mapping[str, Any], spec: ProviderSpec | None, env: Mapping[str, str]
) -> tuple[tuple[ApiKey, ...], tuple[str, ...]]:
    """Keys for one provider, in order, without duplicates; and the variables a user may set."""
    prefix = _env_prefix(provider)
    explicit_vars = _listify(raw.get("api_key_env"))
    conventional = list(spec.key_env) if spec else []
    numbered = sorted(
        (k for k in env if re.fullmatch(rf"{prefix}_API_KEY_\d+", k)), key=lambda k: int(k.rsplit("_", 1)[1])
    )
    variables = explicit_vars + [v for v in conventional + [f"{prefix}_API_KEY"] if v not in explicit_vars]
    keys: list[ApiKey] = [ApiKey(k, "config") for k in _listify(raw.get("api_key")) if k]
    if keys:  # keys written into the config pin the endpoint to them (a local server, the sandbox)
        return tuple(keys), tuple(explicit_vars or variables[:1])
    for var in variables + numbered:
        value = env.get(var, "").strip()
        if value and all(value != k.value for k in keys):
            keys.append(ApiKey(value, var))
    shown_vars = tuple(explicit_vars or variables[: max(1, len(conventional))])
    return tuple(keys), shown_vars


def _batch(p: _Problems, key: str, raw: Mapping[str, Any], spec: ProviderSpec | None) -> BatchSupport | None:
    """The provider's batch API: the catalog's, unless ``batch`` turns it off, on, or changes fields."""
    if "batch" not in raw:
        return spec.batch if spec else None
    value = raw["batch"]
    if value is True and spec is not None and spec.batch is not None:  # on: the catalog's own batch API
        return spec.batch
    if isinstance(value, Mapping) and spec is not None and spec.batch is not None:
        value = {**{k: v for k, v in asdict(spec.batch).items() if v is not None}, **value}
    try:
        return parse_batch(value, f"{key}.batch", raw.get("kind", spec.wire if spec else "openai"))
    except ValueError as exc:
        where, _, problem = str(exc).partition(": ")
        p.items.append(f"{p.source}: {where}: {problem}")
        return None


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    *,
    env: Mapping[str, str] | None = None,
    catalog: Catalog | None = None,
) -> Config:
    """Load and validate configuration; ConfigError lists every problem found."""
    if isinstance(source, Config):
        return source
    env = os.environ if env is None else env
    catalog = catalog or load_catalog()
    data, where = _read_source(source)
    return _build(data, where, env, catalog)


def _read_source(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> tuple[Mapping[str, Any], str]:
    """The raw table and where it came from: the file's path, or what a dict calls itself."""
    if isinstance(source, Mapping):
        name = source.get("name")
        return source, name if isinstance(name, str) and name else "config dict"
    path = Path(source) if source is not None else Path(DEFAULT_FILE)
    if source is None and not path.exists():
        return {}, BUILT_IN
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (pass an existing path, or omit it to use defaults).")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; pass the config file itself (e.g. {path / DEFAULT_FILE}).")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), str(path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                          "TOML files are UTF-8: save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from exc


def _build(data: Mapping[str, Any], where: str, env: Mapping[str, str], catalog: Catalog) -> Config:
    p = _Problems(where)
    top = _check(p, data, "(top level)", _TOP_SPEC) if isinstance(data, Mapping) else {}
    defaults_raw = _check(p, top.get("defaults", {}), "defaults", _DEFAULTS_SPEC)
    defaults = Defaults(
        **{k: (tuple(v) if k == "provider_order" else v) for k, v in defaults_raw.items()}
    )

    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelSpec] = dict(catalog.models)
    raw_providers: Mapping[str, Any] = top.get("providers", {})
    for pid in list(catalog.providers) + [k for k in raw_providers if k not in catalog.providers]:
        raw = raw_providers.get(pid, {})
        key = f"providers.{pid}"
        if not isinstance(raw, Mapping):
            p.add(key, raw, "a table")
            continue
        if "/" in pid:
            p.add(key, pid, "a provider id without '/'")
            continue
        raw = _check(p, raw, key, _PROVIDER_SPEC)
        spec = catalog.providers.get(pid)
        if spec is None and "base_url" not in raw:
            p.add(f"{key}.base_url", None, "a base_url for a provider the catalog does not know")
            continue
        keys, key_vars = _gather_keys(pid, raw, spec, env)
        published = raw.get("published_limits", True)
        base_limits = spec.limits if spec and published else Limits()
        if not published:  # a simulated or private endpoint: only the limits written here apply
            for name, model in list(models.items()):
                if model.provider == pid:
                    models[name] = replace(model, limits=Limits())
        overrides = Limits(**{k: raw[k] for k in _LIMIT_SPEC if k in raw}, source=where if any(k in raw for k in _LIMIT_SPEC) else None)
        providers[pid] = ProviderConfig(
            id=pid,
            name=raw.get("name", spec.name if spec else pid),
            wire=raw.get("kind", spec.wire if spec else "openai"),
            base_url=raw.get("base_url", _endpoint(spec, env)).rstrip("/"),
            keys=keys,
            key_vars=key_vars,
            limits=base_limits.merged(overrides),
            headers=dict(raw.get("headers", {})),
            max_audio_mb=raw.get("max_audio_mb", spec.max_audio_mb if spec else None),
            fallback=tuple(raw.get("fallback", ())),
            params=_params(raw, raw.get("kind", spec.wire if spec else "openai")),
            endpoint_vars=spec.base_url_env if spec else (),
            batch=_batch(p, key, raw, spec),
        )
        if raw.get("catalog_models", True) is False:  # the endpoint serves what it lists, nothing else
            listed = {f"{pid}/{m}" for m in raw.get("models", [])}
            for name in [n for n, m in models.items() if m.provider == pid and n not in listed]:
                del models[name]
        for model_id in raw.get("models", []):
            name = f"{pid}/{model_id}"
            models.setdefault(name, ModelSpec(name=name, provider=pid, model_id=model_id, source=where))

    for name, raw in top.get("models", {}).items():
        key = f'models."{name}"'
        provider, _, model_id = name.partition("/")
        if not isinstance(raw, Mapping):
            p.add(key, raw, "a table")
            continue
        if provider not in providers or not model_id:
            p.add(key, name, f"a 'provider/model' name whose provider is one of {sorted(providers)}")
            continue
        raw = _check(p, raw, key, _MODEL_SPEC)
        base = models.get(name) or ModelSpec(name=name, provider=provider, model_id=model_id, source=where)
        limit_override = Limits(**{k: raw[k] for k in _LIMIT_SPEC if k in raw}, source=where if any(k in raw for k in _LIMIT_SPEC) else None)
        fields = {k: raw[k] for k in ("context_window", "max_output_tokens", "input_price", "output_price", "batch_input_price",
                                     "batch_output_price", "priority", "model_id") if k in raw}
        if "capabilities" in raw:
            fields["capabilities"] = frozenset(raw["capabilities"])
        if "pools" in raw:
            fields["pools"] = tuple(raw["pools"])
        if "rejects" in raw:
            fields["rejects"] = frozenset(raw["rejects"])
        models[name] = replace(base, limits=base.limits.merged(limit_override), **fields)

    pools: dict[str, list[str]] = {}
    explicit: set[str] = set()
    for spec in models.values():
        for pool in spec.pools:
            pools.setdefault(pool, []).append(spec.name)
    for pool_name, raw in top.get("pools", {}).items():
        key = f"pools.{pool_name}"
        if not isinstance(raw, Mapping) or not _str_list(raw.get("models")):
            p.add(f"{key}.models", raw.get("models") if isinstance(raw, Mapping) else raw, "a list of 'provider/model' names")
            continue
        unknown = [m for m in raw["models"] if m not in models]
        for m in unknown:
            close = suggest(m, models)
            p.add(f"{key}.models", m, "a known model" + (f" such as {', '.join(close)}" if close else " (see `nbfanout models`)"))
        pools[pool_name] = [m for m in raw["models"] if m in models]
        explicit.add(pool_name)

    for pid in defaults.provider_order:
        if pid not in providers:
            p.add("defaults.provider_order", pid, f"a provider id, one of {sorted(providers)}")
    for provider in providers.values():
        for pid in provider.fallback:
            if pid not in providers or pid == provider.id:
                p.add(f"providers.{provider.id}.fallback", pid, f"another provider id, one of {sorted(set(providers) - {provider.id})}")
    shared = _shared(p, top.get("shared"), env)
    p.raise_if_any()
    for pool_name, pool in pools.items():
        if pool_name not in explicit:  # an explicit [pools.x] keeps the user's order
            pool.sort(key=lambda m: (models[m].priority, models[m].input_price or 0.0))
    return Config(
        defaults=defaults,
        providers=providers,
        models=models,
        pools={k: tuple(v) for k, v in pools.items()},
        source=where,
        shared=shared,
    )


def _shared(p: _Problems, raw: Any, env: Mapping[str, str]) -> SharedConfig | None:
    """The ``[shared]`` table; its URL may come from NBFANOUT_REDIS_URL instead (keeps a password out of the file)."""
    if not isinstance(raw, Mapping):
        return None
    table = _check(p, raw, "shared", _SHARED_SPEC)
    url = table.get("url") or env.get(REDIS_URL_ENV, "")
    if not url:
        if "url" not in raw:
            p.add("shared.url", None, f"a Redis URL (or set {REDIS_URL_ENV})")
        return None
    try:
        return SharedConfig(url, on_unavailable=table.get("on_unavailable", "fail"),
                            lease_s=float(table.get("lease_s", 30.0)), namespace=table.get("namespace", "nbfanout"))
    except UsageError as exc:
        p.add("shared.url", url, str(exc))
        return None


def parse_provider_rpm(text: str | None) -> dict[str, float]:
    """``openai:1000,gemini:60`` → {"openai": 1000.0, "gemini": 60.0}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        provider, sep, value = part.partition(":")
        try:
            rpm = float(value)
            if not sep or not provider or not math.isfinite(rpm) or rpm < 1:
                raise ValueError
        except ValueError:
            raise UsageError(f"--provider-rpm: expected provider:N pairs like openai:500,gemini:60, found {part!r}") from None
        out[provider] = rpm
    return out
