"""Scenarios: loading, validation messages, the client config, TOML writing, masking, lower bounds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import nbfanout.sandbox as sandbox_pkg
from nbfanout.core.errors import ConfigError
from nbfanout.sandbox import (
    BUILTIN_SCENARIOS,
    ScenarioError,
    config_to_toml,
    load_scenario,
    lower_bound_s,
    parse_scenario,
    write_config,
)
from nbfanout.sandbox.scenario import KeySpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_public_names_are_sorted() -> None:
    assert sandbox_pkg.__all__ == sorted(sandbox_pkg.__all__)


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_builtins_load(name: str) -> None:
    sc = load_scenario(name)
    assert sc.name == name and sc.model_names()
    for p in sc.providers:
        assert all(len(k.key) >= 8 for k in p.keys)


def test_problems_name_file_key_found_and_expected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
seed = "fifteen"
[providers.acme]
style = "nope"
keys = []
[providers.acme.models.m]
limits = { rpm = -1, hidden = ["speed"] }
output_tokens = [9, 3]
faults = [{ kind = "explode", probability = 0.5 }, { kind = "slow", first_n = 1 }, { kind = "drop" }]
"""
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    err = info.value
    assert isinstance(err, ConfigError)
    text = "\n".join(err.problems)
    assert all(p.startswith(f"{bad}: key ") for p in err.problems)
    for fragment in [
        "key 'seed': found 'fifteen', expected an integer",
        "key 'providers.acme.style': found 'nope', expected one of",
        "key 'providers.acme.keys': found [], expected a non-empty list of keys",
        "key 'providers.acme.models.\"m\".limits.rpm': found -1, expected a positive integer",
        "key 'providers.acme.models.\"m\".limits.hidden': found ['speed']",
        "key 'providers.acme.models.\"m\".output_tokens': found [9, 3], expected [min, max]",
        "key 'providers.acme.models.\"m\".faults[0].kind': found 'explode'",
        "key 'providers.acme.models.\"m\".faults[1].delay_s': found None, expected a delay in seconds",
        "key 'providers.acme.models.\"m\".faults[2]': found [], expected exactly one trigger",
    ]:
        assert fragment in text, fragment
    assert str(err).startswith(f"Invalid sandbox scenario {bad}: {len(err.problems)} problem(s)")


def test_more_validation() -> None:
    with pytest.raises(ScenarioError, match="No scenario 'nonesuch'"):
        load_scenario("nonesuch")
    base: dict[str, Any] = {"providers": {"p": {"style": "openai", "keys": ["sk-aaaa-1234", "sk-bbbb-1234"], "models": {"m": {}}}}}
    with pytest.raises(ScenarioError, match="several keys ending in …1234"):
        parse_scenario(base)
    busy = {"providers": {"p": {"style": "openai", "keys": ["sk-aaaa-0001"], "models": {"m": {"faults": [
        {"kind": "rate_limit_burst", "while_busy": ["ghost"]}]}}}}}
    with pytest.raises(ScenarioError, match="found 'ghost', expected a model of provider 'p'"):
        parse_scenario(busy)
    wire = {"providers": {"p": {"style": "anthropic", "wire": "openai", "keys": ["sk-aaaa-0001"], "models": {"m": {}}}}}
    with pytest.raises(ScenarioError, match="style 'anthropic' speaks that wire format"):
        parse_scenario(wire)
    key_hidden = {"providers": {"p": {"keys": ["sk-aaaa-0001"], "key_limits": {"rpm": 5, "hidden": ["rpm"]}, "models": {"m": {}}}}}
    with pytest.raises(ScenarioError, match="key_limits.hidden"):
        parse_scenario(key_hidden)


def test_client_config_has_nbfanouts_shape_and_only_advertised_limits() -> None:
    cfg = load_scenario("storm").client_config("http://127.0.0.1:9/")
    assert set(cfg) == {"name", "defaults", "providers", "models"}
    assert cfg["name"] == "sandbox storm at http://127.0.0.1:9"
    assert cfg["defaults"] == {"learn_limits": False}  # sandbox limits never reach the real state file
    openai = cfg["providers"]["openai"]
    assert openai["kind"] == "openai" and openai["base_url"] == "http://127.0.0.1:9/openai/v1"
    assert openai["api_key"][0] == "sk-sbx-storm-openai-oa01" and len(openai["api_key"]) == 4
    assert cfg["providers"]["anthropic"]["base_url"].endswith("/anthropic/v1")
    assert cfg["providers"]["gemini"]["base_url"].endswith("/gemini/v1beta")
    assert cfg["providers"]["gemini"]["kind"] == "gemini"
    for entry in cfg["providers"].values():
        assert set(entry) <= {"kind", "base_url", "api_key", "models", "rpm", "tpm", "rpd", "concurrency", "published_limits",
                              "catalog_models", "batch"}
        assert entry["published_limits"] is False  # a simulated provider has only the limits written here
        assert entry["catalog_models"] is False  # and only the models it serves
    assert cfg["models"]["openai/gpt-4o-mini"] == {"rpm": 30, "tpm": 60000}
    assert cfg["models"]["openrouter/meta-llama/llama-3.3-70b-instruct:free"] == {"concurrency": 1}
    assert "groq/llama-3.3-70b-versatile" not in cfg["models"]  # hidden
    assert "rpm" not in cfg["providers"]["groq"]  # key limits are never advertised


def test_a_sandbox_config_lists_only_the_models_the_sandbox_serves() -> None:
    """Seen: the seed15 config listed 46 models (every catalog model of its providers); most 404ed."""
    from nbfanout.config import load_config

    scenario = load_scenario("seed15")
    config = load_config(scenario.client_config("http://127.0.0.1:9"), env={})
    served = {f"{p.id}/{m.id}" for p in scenario.providers for m in p.models}
    ours = {p.id for p in scenario.providers}
    sandboxed = {name for name, m in config.models.items() if m.provider in ours}
    assert sandboxed == served
    assert config.source == "sandbox seed15 at http://127.0.0.1:9"
    # a pool never sends a sandboxed provider a model it does not serve (the seeds' 404s)
    assert all(m in served for members in config.pools.values() for m in members if m.split("/", 1)[0] in ours)


def test_written_config_round_trips_through_tomllib(tmp_path: Path) -> None:
    cfg = load_scenario("seed15").client_config("http://127.0.0.1:8765")
    path = write_config(cfg, tmp_path / "nbfanout.toml", comment="test")
    text = path.read_text()
    assert '[models."openrouter/deepseek/deepseek-r1-0528:free"]' in text
    assert tomllib.loads(text) == cfg
    assert tomllib.loads(config_to_toml({"a": {"b c": {"x": [1, 2.5, "q\"uote"], "y": True}}})) == {
        "a": {"b c": {"x": [1, 2.5, 'q"uote'], "y": True}}
    }


def test_keys_are_masked_everywhere_but_the_config() -> None:
    sc = load_scenario("storm")
    public = sc.public_dict()
    text = repr(public) + repr(sc) + repr(sc.providers[0].keys)
    for p in sc.providers:
        for k in p.keys:
            assert k.key not in text
            assert k.key_id in repr(public)
    assert repr(KeySpec("sk-secret-value-zz99", invalid=True)) == "KeySpec(…zz99, invalid)"


def test_seed15_lower_bound_is_the_free_r1_alone() -> None:
    sc = load_scenario("seed15")
    lb = sc.lower_bound(prompt_tokens=3166, max_tokens=1024)
    r1 = sc.resolve("openrouter/deepseek/deepseek-r1-0528:free")[1]
    expected = r1.latency.min_seconds(r1.output_tokens[0]) + 0.3
    assert lb.critical == "openrouter/deepseek/deepseek-r1-0528:free"
    assert lb.seconds == pytest.approx(expected)
    assert lower_bound_s("seed15", prompt_tokens=3166, max_tokens=1024) == pytest.approx(expected)
    paid = lb.per_model["openrouter/deepseek/deepseek-r1-0528"]
    assert lb.serialized_s == pytest.approx(paid + expected)
    assert sc.with_time_scale(0.5).lower_bound(prompt_tokens=3166, max_tokens=1024).seconds == pytest.approx(expected / 2)


def test_lower_bound_counts_limit_windows() -> None:
    sc = parse_scenario(
        {
            "providers": {
                "p": {
                    "keys": ["sk-test-key-0001"],
                    "limits": {"tpm": 10000, "concurrency": 2},
                    "models": {m: {"latency": {"base_ms": 1000}, "output_tokens": [10, 10]} for m in "abcde"},
                }
            }
        }
    )
    # 4000 tokens a request against 10000 TPM: two a minute, so five need two more minutes.
    assert lower_bound_s(sc, prompt_tokens=3000, max_tokens=1000) == pytest.approx(121.0)
    assert lower_bound_s(sc, prompt_tokens=3000, max_tokens=8000) == float("inf")
    # Without the token limit, concurrency 2 over five 1 s answers needs 2.5 s at least.
    assert lower_bound_s(sc, prompt_tokens=10, max_tokens=10) == pytest.approx(2.5)
