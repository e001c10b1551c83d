"""Sandbox scenarios: the providers, keys, models, limits, latencies and faults a sandbox plays.

A scenario is a TOML file. Every table and key is checked; a mistake raises
``ScenarioError`` (a ``ConfigError``) naming the file, the key, what was found and what
was expected. Schema::

    name = "seed15"                 # optional, defaults to the file stem
    description = "..."             # optional
    seed = 15                       # drives answers, output lengths, jitter, probabilistic faults
    time_scale = 1.0                # multiplies every latency and fault delay (not limit windows)

    [providers.<id>]                # <id> is the first URL segment: {url}/<id>/v1/...
    style = "openrouter"            # whose headers and error bodies to imitate: openai, groq,
                                    #   openrouter, together, deepseek, mistral, generic,
                                    #   anthropic, gemini
    wire = "openai"                 # openai | anthropic | gemini (defaults from style)
    organization = "org-sandbox"    # quoted in error messages, as providers do
    keys = ["sk-sbx-...",           # a plain key, or a table:
            { key = "sk-sbx-...", invalid = true },          # 401 on every call
            { key = "sk-sbx-...", quota_exhausted = true },  # out of credit on every call
            { key = "sk-sbx-...", limits = { rpm = 3 } }]    # this key's own limits
    limits = { rpm = 100, hidden = ["rpm"] }   # shared by every key and model of the provider
    key_limits = { rpm = 500, tpm = 90000 }    # applied to each key separately
    tokens_counted = "max_tokens"   # or "usage": TPM settles to the real output when an answer ends
    faults = [ ... ]                # fault rules for every model of the provider (see below)

    [providers.<id>.batch]          # optional: how its batch API behaves (see "Batches");
    complete_after_s = 2.0          #   batch = false: it has none

    [providers.<id>.groups.<name>]  # a limit several models share (OpenRouter's
    models = ["a:free", "b:free"]   #   "free-models-per-min" is one); <name> is quoted in 429s
    limits = { rpm = 20, per_key = true }

    [providers.<id>.models."<model id>"]       # the provider's own model id
    kind = "chat"                   # or "transcription" (POST .../v1/audio/transcriptions)
    limits = { rpm = 500, tpm = 30000, rpd = 10000, concurrency = 4, per_key = true,
               hidden = ["tpm"] }
    latency = { base_ms = 600, per_output_token_ms = 2.5, jitter = 0.1 }
    output_tokens = [600, 800]      # inclusive range; the exact count is seeded per prompt
    faults = [ ... ]
    tool_call = { name = "get_weather", arguments = { city = "Paris" } }
                                    # optional: the call this model makes when a request offers
                                    #   a tool of that name (see "Tool calls" below)

    [pools.<name>]                  # optional: a client-config pool, written as [pools.<name>]
    models = ["<provider>/<model>", ...]

Limits (``rpm``, ``tpm``, ``rpd``, ``concurrency``; all optional positive integers) are
enforced exactly (see ``limits.py``). Every limits table may name its ``limiter`` shape,
``"sliding_window"`` (the default), ``"token_bucket"``, ``"fixed_window"`` or
``"per_second"``; it applies to that table's rpm, tpm and rpd. A table that names none
takes the provider ``limits`` table's ``limiter`` if that names one. ``tokens_counted``
says what TPM charges: ``"max_tokens"`` (default; input + max_tokens at admission, never
changed) or ``"usage"`` (the same at admission, reduced to input + actual output tokens
when the answer completes, as Anthropic documents). ``per_key = true`` gives every key its own copy
of a model's or group's limits (OpenAI's per-organisation model limits); otherwise one
copy is shared by all keys (an upstream's capacity). Provider and model limits are
*advertised* (written into the client config that ``Sandbox.config`` returns) unless
listed in ``hidden``; key and group limits are never advertised: a client learns them
from rate-limit headers and 429 bodies, as with real providers.

A fault rule is a table with ``kind`` and exactly one trigger:

- ``probability = 0.1`` (seeded), ``every_nth = 4``, ``first_n = 2`` (counted per rule,
  over requests to that model, or to the provider for provider-level rules),
- ``during_s = [0, 30]``: every request arriving in that period of the sandbox's life
  (seconds on its clock since it started or was last reset, half-open; not scaled by
  ``time_scale``, like limit windows); a refusal without ``retry_after_s`` asks the
  client to wait until the period ends, or
- ``while_busy = ["model-a", ...]`` with ``after_ms``: the request is admitted, waits
  ``after_ms`` in the upstream's queue, and fails if any *other* request to one of the
  listed models is in flight then (a shared upstream that is busy).

Kinds: ``rate_limit_burst`` (429 in the provider's own shape, quoting the tightest
RPM that applies, or 60 when none is set; ``retry_after_s`` (default 1 s),
``upstream = true`` for OpenRouter's "Provider returned error" without a wait), ``server_error`` (500),
``unavailable`` (503), ``overloaded`` (529 for Anthropic, 503 elsewhere), ``slow``
(answers after ``delay_s``, to trip client timeouts), ``drop`` (connection closed without
a response), ``malformed`` (200 with a broken JSON body), ``invalid_key`` (401),
``empty_answer`` (200 with no text at all, as models sometimes answer; a judge client
must ask again), ``quota_exhausted`` (OpenAI ``insufficient_quota`` 429, OpenRouter 402, Anthropic credit
balance 400, Gemini quota 429), ``permission_denied`` (403: OpenAI's region refusal, Anthropic's
``permission_error``, Gemini's ``PERMISSION_DENIED``), ``content_filter`` (200 with no text and the
provider's filtered finish: ``content_filter``, ``refusal``, ``SAFETY``). Rejections (rate limits, overload, auth, quota) happen
before admission and use no quota; ``server_error``, ``slow``, ``drop`` and ``malformed``
happen after admission, take time (``delay_s``, default the model's base latency) and
count against the limits, as a real failed call does.

Tool calls: a chat request that offers tools, and whose conversation does not end with a
tool result, is answered with exactly one tool call: the model's ``tool_call`` when the
request offers a tool of that name, else a call of the request's first tool with arguments
built from its JSON schema (see ``nbfanout.sandbox.wire.schema_arguments``). A
conversation that ends with a tool result is answered with text.

Batches: a provider whose style has a batch API (``BATCH_STYLES``: OpenAI's files +
batches for openai, groq, together and generic; Anthropic's message batches; Gemini's batch
mode; Mistral's batch jobs; OpenRouter's inline batches; see ``batches.py``) serves it, with the defaults below unless its
``[providers.<id>.batch]`` table says otherwise; ``batch = false`` turns it off (its batch
routes then answer 404, as a provider without one does). Batch answers come from the same
code as live answers, never touch the live limits, and a batch's status is a pure function
of the sandbox clock. Every duration below is in scenario seconds, multiplied by
``time_scale`` (0: every batch ends the moment it is created), counted from the batch's
creation::

    in_progress_after_s = 0.0   # validating -> in_progress (Gemini PENDING -> RUNNING; an
                                #   Anthropic batch shows in_progress from its creation)
    complete_after_s = 1.0      # the last request is done (>= in_progress_after_s)
    finalizing_s = 0.0          # OpenAI: finalizing -> completed after this much longer
    cancel_after_s = 0.0        # a cancel request takes this long (cancelling -> cancelled)
    progress = true             # requests finish one by one, evenly, while in_progress
                                #   (OpenAI and Gemini counts grow; Anthropic's counts stay
                                #   0 until the batch ends, as Anthropic documents)
    expire = false              # true: the window closes at complete_after_s with only
    expire_fraction = 0.5       #   this share of the requests (in input order) done; the
                                #   rest expire (OpenAI error code batch_expired)
    fail_validation = "..."     # the batch fails validation with this message (OpenAI:
                                #   status failed, errors.data; Anthropic: a 400 at create;
                                #   Gemini: BATCH_STATE_FAILED; Mistral: FAILED, errors;
                                #   OpenRouter: failed, error.message)
    errored_custom_ids = ["r7"] # these requests error inside the batch (Gemini: the
    errored_every_nth = 5       #   metadata "key", else the 0-based index), or every n-th
    error_kind = "server_error" # how they fail: server_error, overloaded, unavailable or
    error_message = "..."       #   bad_request, in the provider's own error body
    max_requests = 50000        # per-batch limits; default the provider's documented ones
    max_bytes = 209715200       #   (OpenAI 50,000 / 200 MB, Anthropic 100,000 / 256 MB,
                                #   Gemini inline 20 MB, Mistral 100,000 / 512 MB,
                                #   OpenRouter 5,000 / 200 MB)

``lower_bound(...)`` says how fast any client could possibly run a set of models once,
or ``prompts`` times each.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from nbfanout._secrets import mask
from nbfanout.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BATCH_API_OF_STYLE",
    "BATCH_ERROR_KINDS",
    "BATCH_STYLES",
    "BUILTIN_SCENARIOS",
    "BatchSpec",
    "DEFAULT_LIMITER",
    "FAULT_KINDS",
    "Fault",
    "GroupSpec",
    "KeySpec",
    "LIMITERS",
    "Latency",
    "Limits",
    "LowerBound",
    "ModelSpec",
    "ProviderSpec",
    "STYLES",
    "Scenario",
    "ScenarioError",
    "TOKENS_COUNTED",
    "ToolCallSpec",
    "load_scenario",
    "lower_bound_s",
    "mask_key",
    "parse_scenario",
]

#: ``ash`` / ``asd``: seconds of audio per hour / day, as Groq limits transcription
#: (https://console.groq.com/docs/rate-limits); only transcriptions are charged them.
LIMIT_KINDS: tuple[str, ...] = ("rpm", "tpm", "rpd", "ash", "asd", "concurrency")

#: Limiter shapes a limits table may name; the first is the default (the sliding log).
LIMITERS: tuple[str, ...] = ("sliding_window", "token_bucket", "fixed_window", "per_second")
DEFAULT_LIMITER = "sliding_window"

#: What a provider's TPM charges: ``max_tokens`` (default) or the answer's real ``usage``.
TOKENS_COUNTED: tuple[str, ...] = ("max_tokens", "usage")

#: style -> wire format it speaks.
STYLES: Mapping[str, str] = {
    "openai": "openai",
    "groq": "openai",
    "openrouter": "openai",
    "together": "openai",
    "deepseek": "openai",
    "mistral": "openai",
    "generic": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    # OpenAI's bodies behind Azure's deployment URLs, api-key header and api-version (its own wire)
    "azure": "azure",
}
WIRES = frozenset({"openai", "anthropic", "gemini", "azure"})

FAULT_KINDS: tuple[str, ...] = (
    "rate_limit_burst",
    "server_error",
    "unavailable",
    "overloaded",
    "slow",
    "drop",
    "malformed",
    "empty_answer",
    "invalid_key",
    "quota_exhausted",
    "permission_denied",
    "content_filter",
)
#: Faults decided before admission: they use no quota and answer at once.
PRE_ADMISSION = frozenset({"rate_limit_burst", "unavailable", "overloaded", "invalid_key", "quota_exhausted",
                           "permission_denied"})
#: Faults decided after admission: they take time and count against the limits.
POST_ADMISSION = frozenset({"server_error", "slow", "drop", "malformed", "empty_answer", "content_filter"})

#: Styles whose provider has a batch API the sandbox serves: OpenAI's files + batches (OpenAI,
#: and Groq and Together, which copy it: console.groq.com/docs/batch,
#: docs.together.ai/docs/inference/batch/overview; a generic OpenAI-compatible endpoint too),
#: Anthropic's message batches, Gemini's batch mode, Mistral's batch jobs (/v1/batch/jobs on
#: OpenAI's file upload) and OpenRouter's inline batches (/v1/batches, requests and results in
#: the JSON). DeepSeek and Azure's deployments batch not at all here.
BATCH_STYLES = frozenset({"openai", "groq", "together", "generic", "anthropic", "gemini", "mistral", "openrouter"})
#: Styles of the OpenAI wire whose batch API has its own shape (the client config's ``batch.api``).
BATCH_API_OF_STYLE: Mapping[str, str] = {"mistral": "mistral", "openrouter": "openrouter"}
#: How a request that errors inside a batch fails (rendered by the wire module, as a live refusal).
BATCH_ERROR_KINDS: tuple[str, ...] = ("server_error", "overloaded", "unavailable", "bad_request")

BUILTIN_SCENARIOS: tuple[str, ...] = (
    "batch_api",
    "batch_fixed_window",
    "batch_headers",
    "batch_per_second",
    "batch_sliding_window",
    "batch_token_bucket",
    "failover",
    "fast",
    "seed15",
    "storm",
)


class ScenarioError(ConfigError):
    """A scenario file is invalid; ``problems`` lists each one as file, key, found, expected."""


def mask_key(key: str | None) -> str:
    """A key as it may be shown anywhere: its last four characters only."""
    return mask(key) or "(none)"


@dataclass(frozen=True, slots=True)
class Limits:
    """RPM / TPM / RPD / concurrency for one scope; None means no limit of that kind.

    ``limiter`` is the shape the scenario names for rpm / tpm / rpd (inherited from the
    provider's table when this one names none); None means the default sliding window.
    """

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    ash: int | None = None
    asd: int | None = None
    concurrency: int | None = None
    hidden: frozenset[str] = frozenset()
    per_key: bool = False
    limiter: str | None = None

    @property
    def shape(self) -> str:
        """The limiter shape that enforces this table's windowed limits."""
        return self.limiter or DEFAULT_LIMITER

    def items(self) -> list[tuple[str, int]]:
        """The limits that are set, as (kind, value) pairs in a fixed order."""
        return [(k, v) for k in LIMIT_KINDS if (v := getattr(self, k)) is not None]

    def advertised(self) -> dict[str, int]:
        """The limits a client config may state (set and not hidden)."""
        return {k: v for k, v in self.items() if k not in self.hidden}

    @property
    def empty(self) -> bool:
        return not self.items()


def _advertised(lim: Limits) -> dict[str, Any]:
    """A client-config table's limits: the advertised ones, with the named shape next to them."""
    adv: dict[str, Any] = dict(lim.advertised())
    if adv and lim.limiter is not None:
        adv["limiter"] = lim.limiter
    return adv


@dataclass(frozen=True, slots=True)
class Latency:
    """How long an answer takes: base + per output token, times (1 ± jitter), in ms; and how long a
    limit's refusal takes to come back (``refusal_ms``: the network's round trip, no work done)."""

    base_ms: float = 0.0
    per_output_token_ms: float = 0.0
    jitter: float = 0.0
    refusal_ms: float = 0.0

    def seconds(self, output_tokens: int, u: float = 0.0) -> float:
        """Latency in seconds for ``output_tokens``, with ``u`` in [-1, 1] picking the jitter."""
        raw = self.base_ms + self.per_output_token_ms * output_tokens
        return max(0.0, raw * (1.0 + self.jitter * u)) / 1000.0

    def min_seconds(self, output_tokens: int) -> float:
        return self.seconds(output_tokens, -1.0)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault rule: what goes wrong (``kind``) and when (exactly one trigger)."""

    kind: str
    probability: float | None = None
    every_nth: int | None = None
    first_n: int | None = None
    while_busy: tuple[str, ...] = ()
    during_s: tuple[float, float] | None = None
    after_ms: float = 0.0
    retry_after_s: float | None = None
    delay_s: float | None = None
    upstream: bool = False
    message: str | None = None

    @property
    def phase(self) -> str:
        """"busy" (while_busy rules), "pre" (before admission) or "post" (after admission)."""
        if self.while_busy:
            return "busy"
        return "pre" if self.kind in PRE_ADMISSION else "post"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One API key the sandbox accepts (or pointedly refuses). Shown only by its last four chars."""

    key: str = field(repr=False)
    invalid: bool = False
    quota_exhausted: bool = False
    limits: Limits = Limits()

    @property
    def key_id(self) -> str:
        return mask_key(self.key)

    def __repr__(self) -> str:
        flags = "".join([", invalid" if self.invalid else "", ", quota_exhausted" if self.quota_exhausted else ""])
        return f"KeySpec({self.key_id}{flags})"


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """A model's scripted tool call (``tool_call = { name, arguments }``), made when a request offers ``name``."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of a provider: its limits, latency, output length range and faults."""

    id: str
    kind: str = "chat"
    limits: Limits = Limits()
    latency: Latency = Latency()
    output_tokens: tuple[int, int] = (50, 150)
    faults: tuple[Fault, ...] = ()
    rejects: tuple[str, ...] = ()  # request parameters answered with a 400 (a reasoning model's temperature)
    tool_call: ToolCallSpec | None = None  # the call to make when a request offers this tool


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A provider's ``[batch]`` table: when its batches move on, and the faults inside them.

    Durations are scenario seconds from the batch's creation, multiplied by ``time_scale``.
    ``max_requests`` / ``max_bytes`` of None mean the provider's documented limits.
    """

    in_progress_after_s: float = 0.0
    complete_after_s: float = 1.0
    finalizing_s: float = 0.0
    cancel_after_s: float = 0.0
    progress: bool = True
    expire: bool = False
    expire_fraction: float = 0.5
    fail_validation: str | None = None
    errored_custom_ids: tuple[str, ...] = ()
    errored_every_nth: int | None = None
    error_kind: str = "server_error"
    error_message: str | None = None
    max_requests: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A limit shared by several models of one provider (e.g. OpenRouter's free-models-per-min)."""

    name: str
    models: tuple[str, ...]
    limits: Limits


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One simulated provider, reached at ``{url}/{id}/...``."""

    id: str
    wire: str
    style: str
    keys: tuple[KeySpec, ...]
    models: tuple[ModelSpec, ...]
    limits: Limits = Limits()
    key_limits: Limits = Limits()
    groups: tuple[GroupSpec, ...] = ()
    faults: tuple[Fault, ...] = ()
    organization: str = "org-sandbox"
    tokens_counted: str | None = None  # None: the default, "max_tokens"
    batch: BatchSpec | None = None  # None: the provider serves no batch API (its style has none, or batch = false)

    @property
    def counts_usage(self) -> bool:
        """Whether TPM charges settle to the real output tokens when an answer completes."""
        return self.tokens_counted == "usage"

    def model(self, model_id: str) -> ModelSpec | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    def key(self, key: str | None) -> KeySpec | None:
        if not key:
            return None
        for k in self.keys:
            if k.key == key:
                return k
        return None

    def groups_of(self, model_id: str) -> tuple[GroupSpec, ...]:
        return tuple(g for g in self.groups if model_id in g.models)

    @property
    def batch_api(self) -> str | None:
        """The batch API it serves (None: none): its wire's, or Mistral's or OpenRouter's own shape."""
        if self.batch is None:
            return None
        return BATCH_API_OF_STYLE.get(self.style, self.wire) if self.wire == "openai" else self.wire


def _client_batch(p: ProviderSpec, time_scale: float) -> bool | dict[str, Any]:
    """The client's ``batch`` entry for a simulated provider: off where it serves none, else its API
    with this scenario's per-batch limits and a status poll fast enough for batches of seconds."""
    if p.batch is None:
        return False
    api = p.batch_api
    poll = max(0.05, min(p.batch.complete_after_s, 1.0) * time_scale / 5) if time_scale > 0 else 0.05
    out: dict[str, Any] = {"api": api, "poll_s": poll, "max_poll_s": max(poll, 1.0 * time_scale or 0.05)}
    if p.batch.max_requests is not None:
        out["max_requests"] = p.batch.max_requests
    if p.batch.max_bytes is not None:
        out["max_bytes"] = p.batch.max_bytes
    return out


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole sandbox world: providers with their keys, models, limits and faults."""

    name: str
    providers: tuple[ProviderSpec, ...]
    seed: int = 0
    time_scale: float = 1.0
    description: str = ""
    source: str = "<memory>"
    #: Client-config pools: (name, ("provider/model", ...)), written as [pools.<name>].
    pools: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def provider(self, provider_id: str) -> ProviderSpec | None:
        for p in self.providers:
            if p.id == provider_id:
                return p
        return None

    def model_names(self) -> list[str]:
        """Every model as ``provider/model``, in scenario order."""
        return [f"{p.id}/{m.id}" for p in self.providers for m in p.models]

    def resolve(self, name: str) -> tuple[ProviderSpec, ModelSpec]:
        """``provider/model`` -> specs; KeyError naming the model if unknown."""
        provider_id, _, model_id = name.partition("/")
        p = self.provider(provider_id)
        m = p.model(model_id) if p is not None else None
        if p is None or m is None:
            raise KeyError(f"scenario {self.name!r} has no model {name!r}")
        return p, m

    def with_time_scale(self, time_scale: float) -> Scenario:
        return replace(self, time_scale=time_scale)

    def client_config(self, url: str) -> dict[str, Any]:
        """nbfanout config (dict shape of nbfanout.toml) pointing every provider at ``url``.

        Each provider and model table states its advertised limits, with ``limiter`` next
        to them where the scenario names a shape; a provider table states
        ``tokens_counted`` where set, and always ``published_limits = false`` and
        ``catalog_models = false``: a simulated provider has only the limits and the models
        written here, never the catalog's published limits or its other models.
        """
        url = url.rstrip("/")
        providers: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for p in self.providers:
            keys = [k.key for k in p.keys]
            entry: dict[str, Any] = {
                "kind": p.wire,
                "base_url": f"{url}/{p.id}" if p.wire == "azure" else f"{url}/{p.id}/{'v1beta' if p.wire == 'gemini' else 'v1'}",
                "api_key": keys[0] if len(keys) == 1 else keys,
                "models": [m.id for m in p.models],
            }
            entry.update(_advertised(p.limits))
            if p.tokens_counted is not None:
                entry["tokens_counted"] = p.tokens_counted
            entry["published_limits"] = False
            entry["catalog_models"] = False  # it serves these models only: none of the catalog's others
            entry["batch"] = _client_batch(p, self.time_scale)
            providers[p.id] = entry
            for m in p.models:
                adv = _advertised(m.limits)
                if m.rejects:  # what the catalog records for real models of this kind
                    adv["rejects"] = list(m.rejects)
                if adv:
                    models[f"{p.id}/{m.id}"] = adv
        # Limits learned from a simulated provider must not be saved where real runs would read them.
        out: dict[str, Any] = {"name": f"sandbox {self.name} at {url}", "defaults": {"learn_limits": False},
                               "providers": providers, "models": models}
        if self.pools:
            out["pools"] = {name: {"models": list(members)} for name, members in self.pools}
        return out

    def public_dict(self) -> dict[str, Any]:
        """The scenario as plain data with every key masked to its last four characters."""

        def limits(lim: Limits) -> dict[str, Any]:
            d: dict[str, Any] = dict(lim.items())
            if lim.hidden:
                d["hidden"] = sorted(lim.hidden)
            if lim.per_key:
                d["per_key"] = True
            if lim.limiter is not None:
                d["limiter"] = lim.limiter
            return d

        def faults(fs: Iterable[Fault]) -> list[dict[str, Any]]:
            out = []
            for f in fs:
                d = {k: getattr(f, k) for k in Fault.__slots__}  # type: ignore[attr-defined]
                d["while_busy"] = list(f.while_busy)
                d["during_s"] = list(f.during_s) if f.during_s is not None else None
                out.append({k: v for k, v in d.items() if v not in (None, (), [], False) and not (k == "after_ms" and v == 0.0)})
            return out

        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "time_scale": self.time_scale,
            "pools": {name: list(members) for name, members in self.pools},
            "providers": {
                p.id: {
                    "wire": p.wire,
                    "style": p.style,
                    "organization": p.organization,
                    "tokens_counted": p.tokens_counted or "max_tokens",
                    "keys": [
                        {"key": k.key_id, "invalid": k.invalid, "quota_exhausted": k.quota_exhausted, "limits": limits(k.limits)}
                        for k in p.keys
                    ],
                    "limits": limits(p.limits),
                    "key_limits": limits(p.key_limits),
                    "faults": faults(p.faults),
                    "groups": {g.name: {"models": list(g.models), "limits": limits(g.limits)} for g in p.groups},
                    **({"batch": _batch_dict(p.batch)} if p.batch is not None else {}),
                    "models": {
                        m.id: {
                            "kind": m.kind,
                            "limits": limits(m.limits),
                            "latency": {
                                "base_ms": m.latency.base_ms,
                                "per_output_token_ms": m.latency.per_output_token_ms,
                                "jitter": m.latency.jitter,
                                "refusal_ms": m.latency.refusal_ms,
                            },
                            "output_tokens": list(m.output_tokens),
                            "faults": faults(m.faults),
                            **({"rejects": list(m.rejects)} if m.rejects else {}),
                            **(
                                {"tool_call": {"name": m.tool_call.name, "arguments": dict(m.tool_call.arguments)}}
                                if m.tool_call
                                else {}
                            ),
                        }
                        for m in p.models
                    },
                }
                for p in self.providers
            },
        }

    def lower_bound(
        self,
        models: Sequence[str] | None = None,
        prompt_tokens: int = 1000,
        max_tokens: int | None = None,
        *,
        prompts: int = 1,
        start: float | None = None,
        concurrency: int | None = None,
    ) -> LowerBound:
        """See ``lower_bound_s``."""
        return _lower_bound(self, models, prompt_tokens, max_tokens, prompts, start, concurrency)


# --------------------------------------------------------------------------- lower bound


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The least wall time in which any client could answer every model ``prompts`` times.

    ``seconds`` is the bound; ``per_model`` each model's own bound; ``critical`` the
    model or pool that sets it; ``serialized_s`` the bound when every ``while_busy``
    conflict is served one after the other (what a client that cannot know the hidden
    conflict pays when it happens to send the busy-making model first).
    """

    seconds: float
    per_model: Mapping[str, float]
    critical: str
    serialized_s: float
    notes: tuple[str, ...] = ()


def lower_bound_s(
    scenario: Scenario | str,
    models: Sequence[str] | None = None,
    prompt_tokens: int = 1000,
    max_tokens: int | None = None,
    *,
    prompts: int = 1,
    start: float | None = None,
    concurrency: int | None = None,
) -> float:
    """Seconds below which no client can answer each of ``models`` (all if None) ``prompts`` times.

    Per model, the fastest possible answer is its latency at the smallest output length
    (capped by ``max_tokens``) with the jitter at its minimum, times ``time_scale``, plus
    the ``after_ms`` queue of busy rules. A model's ``first_n`` faults add that many
    attempts; for failures the client must wait for (server_error, drop, malformed) their
    delay too, ``ceil(first_n / prompts)`` times in a row (a ``slow`` answer can be
    abandoned at once; provider-wide ``first_n`` and ``during_s`` rules are not charged).

    Per limit pool (provider, key, group, model; a per-key limit counts once per usable
    key, as ``c`` copies, since a client may spread its requests over them), ``n`` is the
    pool's requests (``prompts`` plus the fault attempts of each member) and ``a`` the
    amount each takes: 1 for rpm / rpd, ``prompt_tokens + max_tokens`` for tpm (without
    ``max_tokens`` each model's largest output; under ``tokens_counted = "usage"`` its
    smallest, the least a request can end up charged). ``T = n·a`` summed over members.
    The time until the pool's last admission, by the pool's shape (``S`` = 60 s for
    rpm / tpm, 86400 s for rpd; ``L`` the limit times ``c``):

    - ``token_bucket``: ``max(0, T - L) · S / L`` (the bucket starts full at ``L`` and
      refills at ``L/S``); for unit requests ``max(0, n - L) · S / L``.
    - ``per_second`` (rpm / tpm; its rpd is a token bucket): capacity ``L/60`` refilled at
      ``L/60`` per second, so ``max(0, T - L/60) · 60 / L``; for unit requests and ``L`` a
      multiple of 60 that is ``max(0, n - L/60) · 60 / L``.
    - ``sliding_window``: ``(ceil(n / (L // a)) - 1) · S`` (a full window per batch of
      ``L // a``); with differing amounts (no ``max_tokens``, or usage counted)
      ``(ceil(T / L) - 1) · S``.
    - ``fixed_window``: the same number ``k`` of further windows, but the first of them
      opens when ``start``'s window ``[j·S, (j+1)·S)`` ends: ``r + (k - 1) · S`` for
      ``k >= 1`` with ``r = (j+1)·S - start``; ``start = None`` takes the worst phase,
      ``r = S``. A pool with a concurrency limit ``c`` starts at most ``c · (floor(r / t) + 1)``
      requests (``t`` its shortest answer) before that first edge, so its first window admits
      no more than that.

    A request larger than a shape's capacity (``L``, or ``L/60`` for per_second) makes
    the bound infinite. After the last admission the shortest answer in the pool still
    takes its time; ``concurrency = c`` makes the pool last at least the sum of its
    answers' latencies (``prompts`` each, plus failed attempts' delays) divided by ``c``.
    A client that keeps at most ``concurrency`` requests in flight (None: no cap) needs at
    least the sum of all answers' latencies divided by it; and where a window pool's
    last window opens at ``W`` (sliding or fixed; ``W`` = its admission wait), the requests
    only that window admits (its tail: the pool's ``n`` less what the earlier windows held,
    each taking the pool's shortest answer) start no sooner, so for each such ``W`` the
    bound is at least ``W`` plus the tails of the pools whose last window opens at ``W`` or
    later (pools sharing no model), divided by ``concurrency``.
    The bound is the maximum of all of these. Probabilistic faults are not counted (a
    lucky client meets none); ``while_busy`` conflicts are avoidable by sending the
    conflicted model first, so they appear only in ``LowerBound.serialized_s``.
    """
    sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
    return _lower_bound(sc, models, prompt_tokens, max_tokens, prompts, start, concurrency).seconds


def _admission(
    shape: str,
    limit: int,
    span: float,
    requests: Sequence[tuple[int, int]],
    *,
    copies: int,
    batches: bool,
    start: float | None,
    first_cap: Callable[[float], int] | None = None,
) -> tuple[float, int]:
    """(least time until the last of ``requests`` ((count, amount) pairs) is admitted under one limit,
    how many requests only the last window admits: 0 unless a window shape waits).

    ``batches``: every request takes the same amount, so a window holds ``limit // a`` of
    them; otherwise amounts are pooled (a window holds ``limit`` tokens in total).
    ``first_cap(r)``: the most requests a pool's concurrency lets start in ``r`` seconds, which
    is all a fixed window that ends ``r`` after the start can admit (batches only).
    """
    reqs = [(n, a) for n, a in requests if n > 0 and a > 0]
    if not reqs:
        return 0.0, 0
    if shape == "per_second" and span == 60.0:
        capacity, rate = limit / 60.0, limit / 60.0
    elif shape in ("token_bucket", "per_second"):
        capacity, rate = float(limit), limit / span
    else:
        capacity, rate = float(limit), 0.0
    if max(a for _, a in reqs) > capacity:
        return math.inf, 0
    total = sum(n * a for n, a in reqs)
    count = sum(n for n, _ in reqs)
    if rate:
        return max(0.0, total - capacity * copies) / (rate * copies), 0
    if batches:
        per_window = limit // reqs[0][1] * copies
        if shape == "fixed_window" and start is not None and first_cap is not None:
            first = (math.floor(start / span) + 1) * span - start
            rest = count - min(per_window, first_cap(first))
            if rest <= 0:
                return 0.0, 0
            more = math.ceil(rest / per_window)
            return first + (more - 1) * span, rest - (more - 1) * per_window
        windows = math.ceil(count / per_window) - 1
        tail = count - windows * per_window
    else:
        windows = math.ceil(total / (limit * copies)) - 1
        tail = math.ceil((total - windows * limit * copies) / max(a for _, a in reqs))  # the fewest that fill it
    if windows <= 0:
        return 0.0, 0
    if shape == "fixed_window":
        first = span if start is None else (math.floor(start / span) + 1) * span - start
        return first + (windows - 1) * span, tail
    return windows * span, tail


def _lower_bound(
    sc: Scenario,
    models: Sequence[str] | None,
    prompt_tokens: int,
    max_tokens: int | None,
    prompts: int = 1,
    start: float | None = None,
    concurrency: int | None = None,
) -> LowerBound:
    if prompts < 1:
        raise ValueError(f"prompts must be at least 1, not {prompts!r}")
    names = list(models) if models is not None else [n for n in sc.model_names()]
    scale = sc.time_scale
    per_model: dict[str, float] = {}  # one answer, after the model's own failures
    busy: dict[str, float] = {}  # the time all of its requests hold a concurrency slot
    extra_attempts: dict[str, int] = {}
    notes: list[str] = []
    for name in names:
        p, m = sc.resolve(name)
        lo = m.output_tokens[0]
        n_out = min(lo, max_tokens) if max_tokens is not None else lo
        t = m.latency.min_seconds(n_out) * scale
        extra = held = 0.0
        n_extra = 0
        for f in m.faults:
            if f.first_n:
                n_extra += f.first_n
                # A failure the client must wait for; a slow answer it may abandon at once.
                if f.phase == "post" and f.kind != "slow":
                    delay = (f.delay_s if f.delay_s is not None else m.latency.base_ms * (1 - m.latency.jitter) / 1000) * scale
                    extra += math.ceil(f.first_n / prompts) * delay
                    held += f.first_n * delay
                notes.append(f"{name}: first {f.first_n} request(s) fail with {f.kind}")
            if f.during_s is not None:
                notes.append(f"{name}: {f.kind} during {f.during_s[0]:g}-{f.during_s[1]:g} s of the sandbox's life (not counted)")
        for f in m.faults:
            if f.while_busy:
                t += f.after_ms / 1000 * scale
        per_model[name] = t + extra
        busy[name] = prompts * t + held
        extra_attempts[name] = n_extra

    # Pools: which requested models share which limits.
    # A per-key limit exists once per usable key: a client may spread its requests over them.
    pools: dict[str, tuple[Limits, int, list[str]]] = {}
    usage: dict[str, bool] = {}
    for name in names:
        p, m = sc.resolve(name)
        usable = sum(1 for k in p.keys if not (k.invalid or k.quota_exhausted))
        if usable == 0:
            per_model[name] = math.inf
            notes.append(f"{name}: provider {p.id} has no usable key")
        scopes = [
            (f"provider {p.id}", p.limits, 1),
            (f"keys of {p.id}", p.key_limits, usable),
            (f"model {name}", m.limits, usable if m.limits.per_key else 1),
        ]
        scopes += [(f"group {p.id}/{g.name}", g.limits, usable if g.limits.per_key else 1) for g in p.groups_of(m.id)]
        for label, lim, copies in scopes:
            if not lim.empty:
                pools.setdefault(label, (lim, max(1, copies), []))[2].append(name)
                usage[label] = p.counts_usage
    bound = max(per_model.values(), default=0.0)
    critical = max(per_model, key=per_model.__getitem__) if per_model else ""
    tails: list[tuple[float, float, set[str]]] = []  # (last window opens, its requests' least work, models)
    for label, (lim, copies, members) in pools.items():
        shape = lim.shape
        unit_requests = [(prompts + extra_attempts[x], 1) for x in members]
        cap = None
        if lim.concurrency:
            # c slots, each starting a request at most every (shortest answer) seconds
            fastest = min(per_model[x] for x in members)
            slots = lim.concurrency * copies

            def cap(r: float, slots: int = slots, fastest: float = fastest) -> int:
                return slots * (math.floor(r / fastest) + 1) if fastest > 0 else 10**12

        wait = partial(_admission, shape, copies=copies, start=start, first_cap=cap)
        waits: list[tuple[float, int]] = []
        if lim.rpm:
            waits.append(wait(lim.rpm, 60.0, unit_requests, batches=True))
        if lim.rpd:
            waits.append(wait(lim.rpd, 86400.0, unit_requests, batches=True))
        if lim.tpm:
            if max_tokens is not None:
                if usage[label]:
                    outs = {x: min(sc.resolve(x)[1].output_tokens[0], max_tokens) for x in members}
                else:
                    outs = {x: max_tokens for x in members}
                token_requests = [(prompts + extra_attempts[x], prompt_tokens + outs[x]) for x in members]
            else:
                # Without max_tokens, the models' longest outputs (shortest when usage is counted) are pooled.
                end = 0 if usage[label] else 1
                token_requests = [(prompts, prompt_tokens + sc.resolve(x)[1].output_tokens[end]) for x in members]
            same = max_tokens is not None and len({a for _, a in token_requests}) == 1
            token_wait = wait(lim.tpm, 60.0, token_requests, batches=same)
            if math.isinf(token_wait[0]):
                largest = max(a for _, a in token_requests)
                notes.append(f"{label}: one request ({largest} tokens) exceeds its TPM ({lim.tpm}, {shape})")
            waits.append(token_wait)
        wait_s, tail = max(waits, default=(0.0, 0))
        shortest = min(per_model[x] for x in members)
        if tail:
            tails.append((wait_s, tail * shortest, set(members)))
        # After the last admission, at least the shortest answer in the pool still has to come.
        pool_bound = wait_s + shortest if wait_s > 0 else 0.0
        if lim.concurrency:
            pool_bound = max(pool_bound, sum(busy[x] for x in members) / (lim.concurrency * copies))
        if pool_bound > bound:
            bound, critical = pool_bound, label
            notes.append(f"{label} limits ({shape}) set the bound")

    if concurrency is not None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        cap_bounds = [(sum(busy.values()) / concurrency, "the client's concurrency")]
        for opens, _, _ in tails:
            seen: set[str] = set()
            work = 0.0
            for w, tail_work, members in sorted(tails, key=lambda t: -t[0]):
                if w >= opens and not members & seen:
                    seen |= members
                    work += tail_work
            cap_bounds.append((opens + work / concurrency, f"the last windows' requests at concurrency {concurrency}"))
        cap_bound, label = max(cap_bounds)
        if cap_bound > bound:
            bound, critical = cap_bound, label
            notes.append(f"{label} sets the bound")

    serialized = bound
    for name in names:
        p, m = sc.resolve(name)
        for f in m.faults:
            for other in f.while_busy:
                other_name = f"{p.id}/{other}"
                if other != m.id and other_name in per_model:
                    serialized = max(serialized, per_model[other_name] + per_model[name])
    return LowerBound(bound, dict(per_model), critical, serialized, tuple(notes))


# --------------------------------------------------------------------------- loading


def load_scenario(name_or_path: str | Path | Scenario) -> Scenario:
    """A built-in scenario by name (see ``BUILTIN_SCENARIOS``: ``seed15``, ``storm``, ``batch_token_bucket``, ...) or a TOML file by path."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    text: str
    source: str
    name = str(name_or_path)
    if name in BUILTIN_SCENARIOS and not Path(name).exists():
        source = f"nbfanout/sandbox/scenarios/{name}.toml"
        text = resources.files("nbfanout.sandbox").joinpath("scenarios", f"{name}.toml").read_text("utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ScenarioError(
                f"No scenario {name!r}: not a built-in ({', '.join(BUILTIN_SCENARIOS)}) and no such file."
            )
        source = str(path)
        text = path.read_text("utf-8")
        name = path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from exc
    return parse_scenario(data, source=source, default_name=Path(name).stem)


class _Problems:
    """Collects validation problems so one run reports them all."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, found: Any, expected: str) -> None:
        self.items.append(f"{self.source}: key {key!r}: found {found!r}, expected {expected}")


def _check_keys(pr: _Problems, where: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for k in table:
        if k not in allowed:
            pr.add(f"{where}.{k}" if where else k, k, f"one of {sorted(allowed)}")


def _table(pr: _Problems, where: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        pr.add(where, value, "a table")
        return {}
    return value


def _pos_int(pr: _Problems, where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        pr.add(where, value, "a positive integer")
        return None
    return value


def _number(pr: _Problems, where: str, value: Any, *, default: float, lo: float = 0.0, hi: float | None = None) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" + (f" and <= {hi}" if hi is not None else "")
        pr.add(where, value, f"a number {rng}")
        return default
    return float(value)


def _str(pr: _Problems, where: str, value: Any, *, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        pr.add(where, value, "a non-empty string")
        return default
    return value


def _limits(pr: _Problems, where: str, value: Any, *, advertisable: bool, inherit: str | None = None) -> Limits:
    """One limits table; ``inherit`` is the provider's ``limiter``, taken when this table names none."""
    t = _table(pr, where, value)
    allowed = [*LIMIT_KINDS, "per_key", "limiter"] + (["hidden"] if advertisable else [])
    _check_keys(pr, where, t, allowed)
    limiter = t.get("limiter", inherit)
    if limiter is not None and limiter not in LIMITERS:
        pr.add(f"{where}.limiter", limiter, f"one of {list(LIMITERS)}")
        limiter = None
    vals = {k: _pos_int(pr, f"{where}.{k}", t.get(k)) for k in LIMIT_KINDS}
    hidden_raw = t.get("hidden", [])
    hidden: set[str] = set()
    if not isinstance(hidden_raw, list) or not all(h in LIMIT_KINDS for h in hidden_raw):
        pr.add(f"{where}.hidden", hidden_raw, f"a list of limit kinds from {list(LIMIT_KINDS)}")
    else:
        hidden = set(hidden_raw)
    per_key = t.get("per_key", False)
    if not isinstance(per_key, bool):
        pr.add(f"{where}.per_key", per_key, "true or false")
        per_key = False
    return Limits(hidden=frozenset(hidden), per_key=per_key, limiter=limiter, **vals)


_FAULT_FIELDS = (
    "kind",
    "probability",
    "every_nth",
    "first_n",
    "while_busy",
    "during_s",
    "after_ms",
    "retry_after_s",
    "delay_s",
    "upstream",
    "message",
)


def _faults(pr: _Problems, where: str, value: Any) -> tuple[Fault, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        pr.add(where, value, "a list of fault tables")
        return ()
    out = []
    for i, raw in enumerate(value):
        w = f"{where}[{i}]"
        t = _table(pr, w, raw)
        if not t:
            continue
        _check_keys(pr, w, t, _FAULT_FIELDS)
        kind = t.get("kind")
        if kind not in FAULT_KINDS:
            pr.add(f"{w}.kind", kind, f"one of {list(FAULT_KINDS)}")
            continue
        triggers = [k for k in ("probability", "every_nth", "first_n", "while_busy", "during_s") if k in t]
        if len(triggers) != 1:
            pr.add(w, triggers, "exactly one trigger of probability, every_nth, first_n, while_busy, during_s")
            continue
        during = _period(pr, f"{w}.during_s", t["during_s"]) if "during_s" in t else None
        prob = _number(pr, f"{w}.probability", t.get("probability"), default=0.0, hi=1.0) if "probability" in t else None
        busy_raw = t.get("while_busy", [])
        if not isinstance(busy_raw, list) or not all(isinstance(x, str) for x in busy_raw) or ("while_busy" in t and not busy_raw):
            pr.add(f"{w}.while_busy", busy_raw, "a non-empty list of model ids of this provider")
            busy_raw = []
        if busy_raw and kind not in PRE_ADMISSION:
            pr.add(f"{w}.kind", kind, f"a rejecting kind for while_busy rules: {sorted(PRE_ADMISSION)}")
        upstream = t.get("upstream", False)
        if not isinstance(upstream, bool):
            pr.add(f"{w}.upstream", upstream, "true or false")
            upstream = False
        message = t.get("message")
        if message is not None and not isinstance(message, str):
            pr.add(f"{w}.message", message, "a string")
            message = None
        delay = _number(pr, f"{w}.delay_s", t.get("delay_s"), default=-1.0)
        if kind == "slow" and "delay_s" not in t:
            pr.add(f"{w}.delay_s", None, "a delay in seconds (required for slow faults)")
        retry_after = _number(pr, f"{w}.retry_after_s", t.get("retry_after_s"), default=-1.0)
        out.append(
            Fault(
                kind=kind,
                probability=prob,
                every_nth=_pos_int(pr, f"{w}.every_nth", t.get("every_nth")),
                first_n=_pos_int(pr, f"{w}.first_n", t.get("first_n")),
                while_busy=tuple(busy_raw),
                during_s=during,
                after_ms=_number(pr, f"{w}.after_ms", t.get("after_ms"), default=0.0),
                retry_after_s=None if retry_after < 0 else retry_after,
                delay_s=None if delay < 0 else delay,
                upstream=upstream,
                message=message,
            )
        )
    return tuple(out)


def _period(pr: _Problems, where: str, value: Any) -> tuple[float, float] | None:
    """``[start, end]`` seconds with 0 <= start < end (a ``during_s`` trigger)."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
        and 0 <= value[0] < value[1]
    ):
        return (float(value[0]), float(value[1]))
    pr.add(where, value, "[start_s, end_s] with 0 <= start_s < end_s (seconds since the sandbox started)")
    return None


def _keys(pr: _Problems, where: str, value: Any, limiter: str | None = None) -> tuple[KeySpec, ...]:
    if not isinstance(value, list) or not value:
        pr.add(where, "(missing)" if value is None else value, "a non-empty list of keys (strings or tables)")
        return ()
    out = []
    for i, raw in enumerate(value):
        w = f"{where}[{i}]"
        if isinstance(raw, str):
            if len(raw) < 8:
                pr.add(w, "(hidden)", "a key string of at least 8 characters")
            else:
                out.append(KeySpec(raw))
            continue
        t = _table(pr, w, raw)
        if not t:
            continue
        _check_keys(pr, w, t, ("key", "invalid", "quota_exhausted", "limits"))
        key = t.get("key")
        if not isinstance(key, str) or len(key) < 8:
            pr.add(f"{w}.key", "(hidden)" if isinstance(key, str) else key, "a key string of at least 8 characters")
            continue
        flags = {}
        for flag in ("invalid", "quota_exhausted"):
            v = t.get(flag, False)
            if not isinstance(v, bool):
                pr.add(f"{w}.{flag}", v, "true or false")
                v = False
            flags[flag] = v
        limits = _limits(pr, f"{w}.limits", t.get("limits"), advertisable=False, inherit=limiter)
        out.append(KeySpec(key, limits=limits, **flags))
    tails = [k.key[-4:] for k in out]
    for tail in {t for t in tails if tails.count(t) > 1}:
        pr.add(where, f"several keys ending in …{tail}", "keys whose last four characters differ (keys are shown only by those)")
    return tuple(out)


def _model(pr: _Problems, where: str, model_id: str, value: Any, limiter: str | None = None) -> ModelSpec:
    t = _table(pr, where, value)
    _check_keys(pr, where, t, ("kind", "limits", "latency", "output_tokens", "faults", "rejects", "tool_call"))
    kind = t.get("kind", "chat")
    if kind not in ("chat", "transcription"):
        pr.add(f"{where}.kind", kind, '"chat" or "transcription"')
        kind = "chat"
    lat_t = _table(pr, f"{where}.latency", t.get("latency"))
    _check_keys(pr, f"{where}.latency", lat_t, ("base_ms", "per_output_token_ms", "jitter", "refusal_ms"))
    latency = Latency(
        base_ms=_number(pr, f"{where}.latency.base_ms", lat_t.get("base_ms"), default=0.0),
        per_output_token_ms=_number(pr, f"{where}.latency.per_output_token_ms", lat_t.get("per_output_token_ms"), default=0.0),
        jitter=_number(pr, f"{where}.latency.jitter", lat_t.get("jitter"), default=0.0, hi=1.0),
        refusal_ms=_number(pr, f"{where}.latency.refusal_ms", lat_t.get("refusal_ms"), default=0.0),
    )
    out_raw = t.get("output_tokens", [50, 150])
    out: tuple[int, int] = (50, 150)
    if (
        isinstance(out_raw, list)
        and len(out_raw) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in out_raw)
        and out_raw[0] <= out_raw[1]
    ):
        out = (out_raw[0], out_raw[1])
    else:
        pr.add(f"{where}.output_tokens", out_raw, "[min, max] with 1 <= min <= max")
    return ModelSpec(
        id=model_id,
        kind=kind,
        limits=_limits(pr, f"{where}.limits", t.get("limits"), advertisable=True, inherit=limiter),
        latency=latency,
        output_tokens=out,
        faults=_faults(pr, f"{where}.faults", t.get("faults")),
        rejects=_rejects(pr, f"{where}.rejects", t.get("rejects")),
        tool_call=_tool_call(pr, f"{where}.tool_call", t.get("tool_call")),
    )


def _rejects(pr: _Problems, where: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not (isinstance(raw, list) and all(isinstance(x, str) and x for x in raw)):
        pr.add(where, raw, "a list of request parameter names, e.g. [\"temperature\"]")
        return ()
    return tuple(raw)


def _tool_call(pr: _Problems, where: str, raw: Any) -> ToolCallSpec | None:
    """``tool_call = { name = "...", arguments = { ... } }`` (arguments optional, a table)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        pr.add(where, raw, 'a table { name = "...", arguments = { ... } }')
        return None
    _check_keys(pr, where, raw, ("name", "arguments"))
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        pr.add(f"{where}.name", name, "a non-empty string (the tool's name)")
        return None
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, Mapping):
        pr.add(f"{where}.arguments", arguments, "a table of the call's arguments")
        return None
    return ToolCallSpec(name, dict(arguments))


def parse_scenario(data: Mapping[str, Any], *, source: str = "<memory>", default_name: str = "scenario") -> Scenario:
    """Validate parsed TOML (a dict) into a Scenario; every problem is reported at once."""
    pr = _Problems(source)
    _check_keys(pr, "", data, ("name", "description", "seed", "time_scale", "providers", "pools"))
    name = _str(pr, "name", data.get("name"), default=default_name)
    description = data.get("description", "")
    if not isinstance(description, str):
        pr.add("description", description, "a string")
        description = ""
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        pr.add("seed", seed, "an integer")
        seed = 0
    time_scale = _number(pr, "time_scale", data.get("time_scale"), default=1.0)
    providers_t = _table(pr, "providers", data.get("providers"))
    if not providers_t:
        pr.add("providers", data.get("providers"), "at least one [providers.<id>] table")
    providers = []
    for pid, raw in providers_t.items():
        w = f"providers.{pid}"
        if not pid.replace("-", "").replace("_", "").isalnum() or pid.startswith("_"):
            pr.add(w, pid, "a provider id of letters, digits, '-' and '_' (it is a URL segment)")
        t = _table(pr, w, raw)
        _check_keys(
            pr,
            w,
            t,
            ("wire", "style", "organization", "keys", "limits", "key_limits", "tokens_counted", "faults", "groups", "models",
             "batch"),
        )
        limits = _limits(pr, f"{w}.limits", t.get("limits"), advertisable=True)
        limiter = limits.limiter  # every other limits table of the provider inherits it
        tokens_counted = t.get("tokens_counted")
        if tokens_counted is not None and tokens_counted not in TOKENS_COUNTED:
            pr.add(f"{w}.tokens_counted", tokens_counted, f"one of {list(TOKENS_COUNTED)}")
            tokens_counted = None
        style = t.get("style", pid if pid in STYLES else "generic")
        if style not in STYLES:
            pr.add(f"{w}.style", style, f"one of {sorted(STYLES)}")
            style = "generic"
        wire = t.get("wire", STYLES[style])
        if wire not in WIRES:
            pr.add(f"{w}.wire", wire, f"one of {sorted(WIRES)}")
            wire = STYLES[style]
        elif STYLES[style] != wire:
            pr.add(f"{w}.wire", wire, f"{STYLES[style]!r} (style {style!r} speaks that wire format)")
        models_t = _table(pr, f"{w}.models", t.get("models"))
        if not models_t:
            pr.add(f"{w}.models", t.get("models"), "at least one [providers.<id>.models.\"<model>\"] table")
        models = tuple(_model(pr, f'{w}.models."{mid}"', mid, mraw, limiter) for mid, mraw in models_t.items())
        model_ids = {m.id for m in models}
        for m in models:
            if m.kind == "transcription" and wire != "openai":
                pr.add(f'{w}.models."{m.id}".kind', m.kind, "chat (only OpenAI-compatible providers transcribe)")
            for i, f in enumerate(m.faults):
                for other in f.while_busy:
                    if other not in model_ids:
                        pr.add(f'{w}.models."{m.id}".faults[{i}].while_busy', other, f"a model of provider {pid!r}")
        groups = []
        for gname, graw in _table(pr, f"{w}.groups", t.get("groups")).items():
            gw = f"{w}.groups.{gname}"
            gt = _table(pr, gw, graw)
            _check_keys(pr, gw, gt, ("models", "limits"))
            gm = gt.get("models")
            if not isinstance(gm, list) or not gm or not all(isinstance(x, str) and x in model_ids for x in gm):
                pr.add(f"{gw}.models", gm, f"a non-empty list of models of provider {pid!r}")
                gm = []
            glim = _limits(pr, f"{gw}.limits", gt.get("limits"), advertisable=False, inherit=limiter)
            groups.append(GroupSpec(gname, tuple(gm), glim))
        providers.append(
            ProviderSpec(
                id=pid,
                wire=wire,
                style=style,
                keys=_keys(pr, f"{w}.keys", t.get("keys"), limiter),
                models=models,
                limits=limits,
                key_limits=_limits(pr, f"{w}.key_limits", t.get("key_limits"), advertisable=False, inherit=limiter),
                groups=tuple(groups),
                faults=_faults(pr, f"{w}.faults", t.get("faults")),
                organization=_str(pr, f"{w}.organization", t.get("organization"), default="org-sandbox"),
                tokens_counted=tokens_counted,
                batch=_batch(pr, f"{w}.batch", t.get("batch", True), style, explicit="batch" in t),
            )
        )
        for i, f in enumerate(providers[-1].faults):
            if f.while_busy:
                pr.add(f"{w}.faults[{i}].while_busy", list(f.while_busy), "while_busy only on model-level faults")
    pools = _pools(pr, data.get("pools"), {f"{p.id}/{m.id}" for p in providers for m in p.models})
    if pr.items:
        head = f"Invalid sandbox scenario {source}: {len(pr.items)} problem(s)"
        raise ScenarioError(head + "\n  " + "\n  ".join(pr.items), problems=tuple(pr.items))
    return Scenario(
        name=name,
        providers=tuple(providers),
        seed=seed,
        time_scale=time_scale,
        description=description,
        source=source,
        pools=pools,
    )


_BATCH_FIELDS = tuple(BatchSpec.__slots__)  # type: ignore[attr-defined]


def _batch(pr: _Problems, where: str, value: Any, style: str, *, explicit: bool) -> BatchSpec | None:
    """A provider's batch API: ``false``, ``true`` (the defaults) or a ``[batch]`` table ("Batches" above)."""
    if value is False or (style not in BATCH_STYLES and not explicit):
        return None
    if style not in BATCH_STYLES:
        pr.add(where, style, f"a batch API only on providers whose style has one: {sorted(BATCH_STYLES)}")
        return None
    if value is True:
        return BatchSpec()
    if not isinstance(value, Mapping):
        pr.add(where, value, "true, false or a [batch] table")
        return None
    t = value
    _check_keys(pr, where, t, _BATCH_FIELDS)
    spec = BatchSpec()
    times = {k: _number(pr, f"{where}.{k}", t.get(k), default=getattr(spec, k))
             for k in ("in_progress_after_s", "complete_after_s", "finalizing_s", "cancel_after_s")}
    if times["complete_after_s"] < times["in_progress_after_s"]:
        pr.add(f"{where}.complete_after_s", times["complete_after_s"],
               f"a number >= in_progress_after_s ({times['in_progress_after_s']:g}): the work ends after it starts")
    flags = {}
    for k in ("progress", "expire"):
        v = t.get(k, getattr(spec, k))
        if not isinstance(v, bool):
            pr.add(f"{where}.{k}", v, "true or false")
            v = getattr(spec, k)
        flags[k] = v
    texts = {}
    for k in ("fail_validation", "error_message"):
        v = t.get(k)
        if v is not None and (not isinstance(v, str) or not v):
            pr.add(f"{where}.{k}", v, "a non-empty string (the message the provider's error carries)")
            v = None
        texts[k] = v
    ids = t.get("errored_custom_ids", [])
    if not isinstance(ids, list) or not all(isinstance(x, str) and x for x in ids):
        pr.add(f"{where}.errored_custom_ids", ids, "a list of custom_id strings")
        ids = []
    kind = t.get("error_kind", spec.error_kind)
    if kind not in BATCH_ERROR_KINDS:
        pr.add(f"{where}.error_kind", kind, f"one of {list(BATCH_ERROR_KINDS)}")
        kind = spec.error_kind
    return BatchSpec(
        **times,
        **flags,
        expire_fraction=_number(pr, f"{where}.expire_fraction", t.get("expire_fraction"), default=spec.expire_fraction, hi=1.0),
        errored_custom_ids=tuple(ids),
        errored_every_nth=_pos_int(pr, f"{where}.errored_every_nth", t.get("errored_every_nth")),
        error_kind=kind,
        max_requests=_pos_int(pr, f"{where}.max_requests", t.get("max_requests")),
        max_bytes=_pos_int(pr, f"{where}.max_bytes", t.get("max_bytes")),
        **texts,
    )


def _batch_dict(spec: BatchSpec) -> dict[str, Any]:
    d = {k: getattr(spec, k) for k in _BATCH_FIELDS}
    d["errored_custom_ids"] = list(spec.errored_custom_ids)
    return {k: v for k, v in d.items() if v is not None}


def _pools(pr: _Problems, value: Any, known: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[pools.<name>] models = [...]``: client-config pools of this scenario's models."""
    out = []
    for name, raw in _table(pr, "pools", value).items():
        w = f"pools.{name}"
        t = _table(pr, w, raw)
        _check_keys(pr, w, t, ("models",))
        members = t.get("models")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) and m in known for m in members):
            pr.add(f"{w}.models", members, "a non-empty list of this scenario's 'provider/model' names")
            continue
        out.append((name, tuple(members)))
    return tuple(out)
