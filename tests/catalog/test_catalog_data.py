"""Checks on the built-in catalog data (nbfanout/catalog/catalog.toml).

These test the data, not the loader: every published limit carries its page and date, every
model has the facts the core needs, the pools can fail over across providers, and every model
the requirement documents (shared/seeds/) name is either in the catalog or accounted for as
retired (with the page saying so) or deliberately not carried (with the reason).
"""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources

import pytest

from nbfanout.catalog import CAPABILITIES, WIRES, load_catalog

# The date the catalog was read; deprecation notes naming a shutdown before it mean the model
# should have been moved to RETIRED.
CATALOG_READ_ON = dt.date(2026, 11, 22)

PROVIDERS = ("openai", "anthropic", "gemini", "groq", "together", "openrouter", "mistral", "deepseek")
POOLS = ("fast", "research", "code", "vision", "audio")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# ---------------------------------------------------------------------------------------------
# Every model the seeds name, written as nbfanout names (provider/<API id>).
# ---------------------------------------------------------------------------------------------

# seeds/000 (thinktank): the 15 models run at once.
SEED_000 = [
    "openai/gpt-4.1",
    "openai/o4-mini",
    "openai/o3",
    "gemini/gemini-2.5-pro",
    "gemini/gemini-2.5-flash",
    "openrouter/deepseek/deepseek-chat-v3-0324",
    "openrouter/deepseek/deepseek-r1-0528",
    "openrouter/deepseek/deepseek-chat-v3-0324:free",
    "openrouter/deepseek/deepseek-r1-0528:free",
    "openrouter/meta-llama/llama-3.3-70b-instruct",
    "openrouter/meta-llama/llama-4-maverick",
    "openrouter/meta-llama/llama-4-scout",
    "openrouter/x-ai/grok-3-mini-beta",
    "openrouter/x-ai/grok-3-beta",
    "openrouter/google/gemma-3-27b-it",
]

# seeds/001 (rotation plan across Groq / OpenAI / TogetherAI): pools, capability matrix, whisper.
SEED_001 = [
    "groq/llama-3.3-70b-versatile",
    "groq/llama-3.1-8b-instant",
    "groq/llama-3.1-70b-versatile",
    "groq/mixtral-8x7b-32768",
    "groq/meta-llama/llama-4-scout-17b-16e-instruct",
    "groq/meta-llama/llama-4-maverick-17b-128e-instruct",
    "groq/whisper-large-v3",
    "groq/whisper-large-v3-turbo",
    "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "together/deepseek-ai/DeepSeek-V3.1",
    "together/Qwen/Qwen2.5-72B-Instruct-Turbo",
    "together/Qwen/Qwen2.5-Coder-32B-Instruct",
    "together/meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "together/Qwen/Qwen2.5-VL-72B-Instruct",
    "together/openai/whisper-large-v3",
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/whisper-1",
]

# seeds/002 (synthesis service): bare names mapped to their API ids; the two Hugging Face
# models were served through Hugging Face, which is not a built-in provider.
SEED_002 = [
    "openai/gpt-4",
    "openai/gpt-4-turbo",
    "anthropic/claude-3-sonnet-20240229",  # "claude-3-sonnet"
    "anthropic/claude-3-haiku-20240307",  # "claude-3-haiku"
    "gemini/gemini-pro",
    "huggingface/meta-llama/Meta-Llama-3-8B-Instruct",
    "huggingface/mistralai/Mistral-7B-Instruct-v0.3",
]

# seeds/003 (FinBench on OpenRouter).
SEED_003 = ["openrouter/x-ai/grok-4-fast", "openrouter/qwen/qwq-32b"]  # the second: "The judge model (OpenRouter QwQ-32B)"

# seeds/004 (agent with circular failover over 29 models).
SEED_004 = [
    "groq/llama-3.3-70b-versatile",
    "groq/llama-3.3-70b-specdec",
    "groq/llama-3.1-70b-versatile",
    "groq/llama-3.1-8b-instant",
    "groq/llama-3.2-90b-text-preview",
    "groq/llama-3.2-90b-vision-preview",
    "groq/llama-3.2-11b-text-preview",
    "groq/llama-3.2-11b-vision-preview",
    "groq/llama-3.2-3b-preview",
    "groq/llama-3.2-1b-preview",
    "groq/llama3-70b-8192",
    "groq/llama3-8b-8192",
    "groq/mixtral-8x7b-32768",
    "groq/gemma2-9b-it",
    "groq/gemma-7b-it",
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/gpt-4-turbo",
    "openai/gpt-4-turbo-preview",
    "openai/gpt-4",
    "openai/gpt-3.5-turbo",
    "openai/gpt-3.5-turbo-16k",
    "anthropic/claude-3-5-sonnet-20241022",
    "anthropic/claude-3-5-haiku-20241022",
    "anthropic/claude-3-opus-20240229",
    "anthropic/claude-3-sonnet-20240229",
    "anthropic/claude-3-haiku-20240307",
]

# Names the design document and the project brief use outside the seeds.
DESIGN_NAMES = [
    "anthropic/claude-sonnet-4",  # design.md notebook example
    "groq/llama-3.3-70b-versatile",
    "together/deepseek-ai/DeepSeek-V3.1",
    "openai/gpt-4o",
    "deepseek/deepseek-chat",
    "deepseek/deepseek-reasoner",
]

SEED_MODELS = sorted(set(SEED_000 + SEED_001 + SEED_002 + SEED_003 + SEED_004 + DESIGN_NAMES))

_GROQ_DEPRECATIONS = "https://console.groq.com/docs/deprecations"
_OPENAI_DEPRECATIONS = "https://developers.openai.com/api/docs/deprecations"
_ANTHROPIC_DEPRECATIONS = "https://platform.claude.com/docs/en/about-claude/model-deprecations"
_XAI_RETIREMENT = "https://docs.x.ai/docs/migration/may-15-retirement"

# Retired by the provider: name -> the page saying so (and when).
RETIRED = {
    # OpenAI: 2026-04-22 notice, shutdowns 2026-07-23 and 2026-10-23.
    "openai/o4-mini": f"{_OPENAI_DEPRECATIONS} (2026-04-22 notice; shut down 2026-10-23)",
    "openai/gpt-4": f"{_OPENAI_DEPRECATIONS} (gpt-4, gpt-4-0613 shut down 2026-10-23)",
    "openai/gpt-4-turbo": f"{_OPENAI_DEPRECATIONS} (gpt-4-turbo shut down 2026-10-23)",
    "openai/gpt-3.5-turbo": f"{_OPENAI_DEPRECATIONS} (gpt-3.5-turbo shut down 2026-10-23)",
    "openai/gpt-3.5-turbo-16k": f"{_OPENAI_DEPRECATIONS} (gpt-3.5-turbo-16k-0613 shut down 2024-06-13)",
    # Groq.
    "groq/llama-3.3-70b-versatile": f"{_GROQ_DEPRECATIONS} (decommissioned 2026-08-16 for free/developer tiers)",
    "groq/llama-3.1-8b-instant": f"{_GROQ_DEPRECATIONS} (decommissioned 2026-08-16)",
    "groq/meta-llama/llama-4-scout-17b-16e-instruct": f"{_GROQ_DEPRECATIONS} (decommissioned 2026-07-17)",
    "groq/meta-llama/llama-4-maverick-17b-128e-instruct": f"{_GROQ_DEPRECATIONS} (decommissioned 2026-03-09)",
    "groq/mixtral-8x7b-32768": f"{_GROQ_DEPRECATIONS} (decommissioned 2025-03-20)",
    "groq/llama-3.1-70b-versatile": f"{_GROQ_DEPRECATIONS} (decommissioned 2025)",
    "groq/llama-3.3-70b-specdec": f"{_GROQ_DEPRECATIONS} (decommissioned 2025)",
    "groq/llama-3.2-90b-text-preview": f"{_GROQ_DEPRECATIONS} (preview models decommissioned)",
    "groq/llama-3.2-90b-vision-preview": f"{_GROQ_DEPRECATIONS} (decommissioned 2025-04-14)",
    "groq/llama-3.2-11b-text-preview": f"{_GROQ_DEPRECATIONS} (preview models decommissioned)",
    "groq/llama-3.2-11b-vision-preview": f"{_GROQ_DEPRECATIONS} (preview models decommissioned)",
    "groq/llama-3.2-3b-preview": f"{_GROQ_DEPRECATIONS} (preview models decommissioned)",
    "groq/llama-3.2-1b-preview": f"{_GROQ_DEPRECATIONS} (preview models decommissioned)",
    "groq/llama3-70b-8192": f"{_GROQ_DEPRECATIONS} (decommissioned 2025)",
    "groq/llama3-8b-8192": f"{_GROQ_DEPRECATIONS} (decommissioned 2025)",
    "groq/gemma2-9b-it": f"{_GROQ_DEPRECATIONS} (decommissioned 2025)",
    "groq/gemma-7b-it": f"{_GROQ_DEPRECATIONS} (decommissioned 2024)",
    # Anthropic.
    "anthropic/claude-sonnet-4": f"{_ANTHROPIC_DEPRECATIONS} (Claude Sonnet 4 and Opus 4 retired 2026-06-15)",
    "anthropic/claude-3-sonnet-20240229": f"{_ANTHROPIC_DEPRECATIONS} (retired 2025-07-21)",
    "anthropic/claude-3-opus-20240229": f"{_ANTHROPIC_DEPRECATIONS} (retired 2026-01-05)",
    "anthropic/claude-3-haiku-20240307": (
        "https://24-ai.news/en/vijest/2026-04-21/anthropic-claude-haiku-3-retirement (2026-04-21: 'formally retired "
        "Claude Haiku 3 (model ID claude-3-haiku-20240307) from production on April 20, 2026'; Anthropic's own page's "
        "table was not in its stored copy)"
    ),
    "anthropic/claude-3-5-sonnet-20241022": f"{_ANTHROPIC_DEPRECATIONS} (Claude Sonnet 3.5 retired 2025-10-22)",
    "anthropic/claude-3-5-haiku-20241022": (
        "https://www.developersdigest.tech/rate-limits/anthropic "
        "(Anthropic's rate-limit page, 2026-10-17: 'Claude Haiku 3.5 (retired, except on Google Cloud)')"
    ),
    # OpenRouter (xAI retired the Grok 3 and Grok 4 Fast models on 2026-05-15).
    "openrouter/x-ai/grok-3-beta": f"{_XAI_RETIREMENT} (grok-3 retired 2026-05-15)",
    "openrouter/x-ai/grok-3-mini-beta": (
        "https://ominigate.ai/en/models/x-ai/grok-3-mini-beta (mirrors OpenRouter's notice: deprecated 2026-05-15)"
    ),
    "openrouter/x-ai/grok-4-fast": f"{_XAI_RETIREMENT} (grok-4-fast-reasoning / -non-reasoning retired 2026-05-15)",
    # DeepSeek.
    "deepseek/deepseek-chat": (
        "https://api-docs.deepseek.com/quick_start/pricing (deepseek-chat / deepseek-reasoner stopped serving "
        "2026-07-24; see Wei-Shaw/sub2api#6097, BerriAI/litellm#29345)"
    ),
    "deepseek/deepseek-reasoner": "https://api-docs.deepseek.com/quick_start/pricing (stopped serving 2026-07-24)",
}

# Not carried, though not shown retired: name -> why.
NOT_CARRIED = {
    "openrouter/google/gemma-3-27b-it": "no stored OpenRouter page from 2026 showing it offered or priced; unverified",
    "together/Qwen/Qwen2.5-72B-Instruct-Turbo": "not in the stored copies of Together's 2026 serverless catalog; unverified",
    "together/Qwen/Qwen2.5-Coder-32B-Instruct": "only an undated secondary listing (models.dev); not confirmed on Together in 2026",
    "together/meta-llama/Llama-4-Scout-17B-16E-Instruct": "not in the stored copies of Together's 2026 serverless catalog",
    "together/Qwen/Qwen2.5-VL-72B-Instruct": "not in the stored copies of Together's 2026 serverless catalog",
    "together/openai/whisper-large-v3": "no stored Together page showing a transcription endpoint for it in 2026",
    "openai/gpt-4-turbo-preview": "legacy preview alias of the GPT-4 Turbo family (shut down 2026-10-23); alias itself not listed",
    "gemini/gemini-pro": "Gemini 1.0 alias; not among the models the 2026 Gemini API docs list",
    "huggingface/meta-llama/Meta-Llama-3-8B-Instruct": "served via Hugging Face, not a built-in provider",
    "huggingface/mistralai/Mistral-7B-Instruct-v0.3": "served via Hugging Face, not a built-in provider",
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _iso(value: str | None) -> bool:
    if value is None or not ISO_DATE.match(value):
        return False
    dt.date.fromisoformat(value)
    return True


def _has_numbers(limits) -> bool:
    return any(v is not None for v in (limits.rpm, limits.tpm, limits.rpd, limits.concurrency))


def test_data_file_has_a_header_saying_what_when_and_how():
    text = resources.files("nbfanout.catalog").joinpath("catalog.toml").read_text(encoding="utf-8")
    header = text.split("[providers.", 1)[0]
    assert header.lstrip().startswith("#")
    assert CATALOG_READ_ON.isoformat() in header
    assert "How to update" in header


def test_all_builtin_providers_present_with_wire_and_https_base(catalog):
    assert set(PROVIDERS) <= set(catalog.providers)
    for pid in PROVIDERS:
        p = catalog.providers[pid]
        assert p.wire in WIRES, pid
        assert p.base_url.startswith("https://"), pid
        assert not p.base_url.endswith("/"), pid
        assert p.key_env and all(k.isupper() for k in p.key_env), pid
        assert p.docs and p.docs.startswith("https://"), pid
    assert catalog.providers["anthropic"].wire == "anthropic"
    assert catalog.providers["gemini"].wire == "gemini"
    for pid in ("openai", "groq", "together", "openrouter", "mistral", "deepseek"):
        assert catalog.providers[pid].wire == "openai", pid
        assert catalog.providers[pid].base_url.endswith("/v1"), pid


def test_provider_limits_are_sourced_and_dated(catalog):
    for pid, p in catalog.providers.items():
        lim = p.limits
        assert lim.source and lim.source.startswith("https://"), pid
        assert _iso(lim.read_on), (pid, lim.read_on)
        assert lim.note, f"{pid}: say which tier the numbers are, or why there are none"


def test_no_model_under_an_unknown_provider(catalog):
    for name, m in catalog.models.items():
        assert m.provider in catalog.providers, name
        assert name == f"{m.provider}/{m.model_id}", name


def test_model_limits_carry_source_and_iso_date(catalog):
    for name, m in catalog.models.items():
        lim = m.limits
        if _has_numbers(lim) or lim.source or lim.read_on:
            assert lim.source and lim.source.startswith("https://"), name
            assert _iso(lim.read_on), (name, lim.read_on)
            assert lim.note, f"{name}: say which tier the limit numbers are"
        for field in ("rpm", "tpm", "rpd", "concurrency"):
            value = getattr(lim, field)
            assert value is None or value > 0, (name, field, value)


def test_every_model_has_source_date_and_token_limits(catalog):
    for name, m in catalog.models.items():
        assert m.source and m.source.startswith("https://"), name
        assert _iso(m.read_on), (name, m.read_on)
        assert m.read_on <= CATALOG_READ_ON.isoformat(), (name, m.read_on)
        if "transcription" in m.capabilities:
            continue
        assert isinstance(m.context_window, int) and m.context_window >= 8192, name
        if m.max_output_tokens is None:
            # Allowed only when the provider does not publish one, and the entry says so.
            assert m.note and "max output not published" in m.note.lower(), name
        else:
            assert isinstance(m.max_output_tokens, int), name
            assert 0 < m.max_output_tokens <= m.context_window, name


def test_prices_are_known_and_non_negative(catalog):
    for name, m in catalog.models.items():
        for field in ("input_price", "output_price", "audio_price_per_minute"):
            value = getattr(m, field)
            assert value is None or value >= 0, (name, field)
        if "transcription" in m.capabilities:
            assert m.audio_price_per_minute is not None, name
        else:
            assert m.input_price is not None and m.output_price is not None, name
            assert m.cost(1_000_000, 1_000_000) == pytest.approx(m.input_price + m.output_price)
        if name.endswith(":free"):
            assert m.input_price == 0 and m.output_price == 0, name
            assert m.limits.rpm is not None, f"{name}: OpenRouter publishes the :free limits"


def test_capabilities_priorities_and_pools_are_well_formed(catalog):
    for name, m in catalog.models.items():
        assert m.capabilities <= CAPABILITIES, name
        assert type(m.priority) is int, name
        assert m.pools, f"{name}: every built-in model belongs to at least one pool"
        assert set(m.pools) <= set(POOLS), (name, m.pools)
        assert len(set(m.pools)) == len(m.pools), name
        if "vision" in m.pools:
            assert "vision" in m.capabilities, name
        if "parallel_tools" in m.capabilities:
            assert "tools" in m.capabilities, name


@pytest.mark.parametrize("pool", POOLS)
def test_every_pool_can_fail_over_across_providers(catalog, pool):
    members = catalog.pools.get(pool, ())
    assert len(members) >= 3, (pool, members)
    assert len({catalog.models[n].provider for n in members}) >= 2, (pool, members)


def test_audio_pool_holds_transcription_models_groq_first(catalog):
    audio = [catalog.models[n] for n in catalog.pools["audio"]]
    for m in audio:
        assert "transcription" in m.capabilities, m.name
    for name, m in catalog.models.items():
        if "transcription" in m.capabilities:
            assert "audio" in m.pools, name
            assert set(m.pools) == {"audio"}, name
    by_priority = sorted(audio, key=lambda m: m.priority)
    assert by_priority[0].provider == "groq"
    best = {}
    for m in audio:
        best[m.provider] = min(best.get(m.provider, 10**9), m.priority)
    assert best["groq"] < best["openai"]
    assert catalog.providers["openai"].max_audio_mb == 25


def test_openrouter_ids_keep_their_slashes(catalog):
    m = catalog.models["openrouter/deepseek/deepseek-r1-0528:free"]
    assert m.provider == "openrouter"
    assert m.model_id == "deepseek/deepseek-r1-0528:free"


def test_deprecation_notes_are_not_stale(catalog):
    """A note announcing a shutdown before the read date means the entry belongs in RETIRED."""
    for name, m in catalog.models.items():
        for day in re.findall(r"[Ss]hut(?:down| down on|s \S+ down on) (\d{4}-\d{2}-\d{2})", m.note or ""):
            assert dt.date.fromisoformat(day) >= CATALOG_READ_ON, (name, day)


def test_seed_models_are_in_the_catalog_or_accounted_for(catalog):
    missing = [n for n in SEED_MODELS if n not in catalog.models and n not in RETIRED and n not in NOT_CARRIED]
    assert not missing, f"seed models neither in the catalog nor accounted for: {missing}"


def test_retired_and_not_carried_models_are_not_in_the_catalog(catalog):
    assert not set(RETIRED) & set(NOT_CARRIED)
    for name, source in RETIRED.items():
        assert name not in catalog.models, f"{name} is retired ({source})"
        assert "https://" in source, name
    for name in NOT_CARRIED:
        assert name not in catalog.models, name
    # Nothing in the lists that no seed or design document names.
    assert set(RETIRED) | set(NOT_CARRIED) <= set(SEED_MODELS)


def test_seed_models_still_offered_are_present(catalog):
    # The seeds' models that the stored provider pages still show as offered.
    for name in (
        "openai/gpt-4.1",
        "openai/o3",
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "openai/whisper-1",
        "gemini/gemini-2.5-pro",
        "gemini/gemini-2.5-flash",
        "groq/whisper-large-v3",
        "groq/whisper-large-v3-turbo",
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "together/deepseek-ai/DeepSeek-V3.1",
        "openrouter/deepseek/deepseek-r1-0528:free",
        "openrouter/meta-llama/llama-4-maverick",
    ):
        assert name in catalog.models, name
