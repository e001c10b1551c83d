"""Config loading: validation names file, key, found and expected; keys gathered and never shown."""

from __future__ import annotations

import pytest

from nbfanout.config import BUILT_IN, load_config
from nbfanout.core.errors import ConfigError, UnknownModelError


def test_defaults_without_a_file_know_every_builtin_provider(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert set(config.providers) >= {"openai", "anthropic", "gemini", "groq", "together", "openrouter", "mistral", "deepseek"}
    assert config.source == BUILT_IN and "no nbfanout.toml" in config.source
    assert not any(p.keys for p in config.providers.values())


def test_keys_come_from_every_documented_variable_in_order_without_duplicates():
    env = {
        "OPENAI_API_KEY": "sk-aaaa1111",
        "OPENAI_API_KEY_2": "sk-bbbb2222",
        "OPENAI_API_KEY_10": "sk-cccc3333",
        "OPENAI_API_KEY_1": "sk-aaaa1111",  # same value as the plain variable: used once
        "MY_OTHER": "sk-dddd4444",
    }
    config = load_config({"providers": {"openai": {"api_key_env": ["MY_OTHER"]}}}, env=env)
    keys = config.providers["openai"].keys
    assert [k.origin for k in keys] == ["MY_OTHER", "OPENAI_API_KEY", "OPENAI_API_KEY_2", "OPENAI_API_KEY_10"]
    assert [k.id for k in keys] == ["…4444", "…1111", "…2222", "…3333"]


def test_a_key_never_appears_in_reprs():
    secret = "sk-live-SECRETSECRET-9z9z"
    config = load_config({"providers": {"openai": {"api_key": secret}}}, env={})
    shown = repr(config) + repr(config.providers["openai"]) + str(config.providers["openai"].keys)
    assert "SECRETSECRET" not in shown
    assert "9z9z" in shown  # the last four characters identify it


def test_generic_openai_compatible_endpoint_adds_its_models():
    config = load_config(
        {"providers": {"local": {"kind": "openai", "base_url": "http://127.0.0.1:8765/v1", "api_key": "sandbox",
                                 "models": ["m1", "m2"], "rpm": 60, "concurrency": 4}}},
        env={},
    )
    assert {"local/m1", "local/m2"} <= set(config.models)
    local = config.providers["local"]
    assert (local.wire, local.base_url, local.limits.rpm, local.limits.concurrency) == ("openai", "http://127.0.0.1:8765/v1", 60, 4)


def test_a_provider_can_say_it_serves_only_the_models_it_lists():
    config = load_config({"providers": {"openai": {"models": ["gpt-4o-mini", "house-model"], "catalog_models": False}}},
                         env={})
    assert {n for n, m in config.models.items() if m.provider == "openai"} == {"openai/gpt-4o-mini", "openai/house-model"}
    assert config.models["openai/gpt-4o-mini"].context_window  # a listed catalog model keeps what the catalog knows
    assert "anthropic/claude-sonnet-5" in config.models  # other providers are untouched
    assert config.source == "config dict"


def test_every_problem_is_reported_with_file_key_found_and_expected(tmp_path):
    path = tmp_path / "nbfanout.toml"
    path.write_text(
        """
[defaults]
concurency = 4
timeout_s = "slow"

[providers.openai]
rpm = -5

[providers.local]
kind = "grpc"

[models."openai/gpt-4o"]
concurrency = 1.5

[pools.research]
models = ["openai/gpt-4o-minii"]
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    problems = caught.value.problems
    text = str(caught.value)
    assert all(p.startswith(str(path)) for p in problems)
    assert "defaults.concurency" in text and "did you mean 'concurrency'" in text
    assert "defaults.timeout_s: expected a positive number of seconds, found 'slow' (string)" in text
    assert "providers.openai.rpm" in text and "-5" in text
    assert "providers.local.kind" in text
    assert 'models."openai/gpt-4o".concurrency' in text and "1.5" in text
    assert "openai/gpt-4o-mini" in text  # the close name is suggested
    assert len(problems) >= 6


def test_malformed_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[defaults\nconcurrency = 4", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(path, env={})


def test_a_config_that_is_not_utf8_or_is_a_directory_is_a_config_error_naming_it(tmp_path):
    """Seen: a non-UTF-8 nbfanout.toml raised UnicodeDecodeError; --config naming a directory, IsADirectoryError."""
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[defaults]\n# café\nconcurrency = 4\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 16 is b'\\xe9'\).*save it as UTF-8"):
        load_config(latin, env={})
    with pytest.raises(ConfigError, match=r"is a directory; pass the config file itself"):
        load_config(tmp_path, env={})


def test_missing_file_is_reported():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/nbfanout.toml", env={})


def test_unknown_model_lists_close_names():
    config = load_config({}, env={})
    with pytest.raises(UnknownModelError) as caught:
        config.model("openai/gpt-4o-minni")
    assert "openai/gpt-4o-mini" in caught.value.suggestions
    with pytest.raises(UnknownModelError) as caught:
        config.model("gpt-4.1")  # provider prefix forgotten
    assert "openai/gpt-4.1" in caught.value.suggestions
    assert "nbfanout models" in str(caught.value)


def test_model_override_merges_limits_over_the_catalog():
    name = "openrouter/deepseek/deepseek-r1-0528:free"
    config = load_config({"models": {name: {"concurrency": 1, "rpm": 20}}}, env={})
    limits = config.model(name).limits
    assert (limits.concurrency, limits.rpm) == (1, 20)


def test_explicit_pool_keeps_the_users_order():
    order = ["openai/gpt-4o", "openai/gpt-4.1"]
    config = load_config({"pools": {"research": {"models": order}}}, env={})
    assert list(config.pools["research"]) == order


def test_keys_written_in_the_config_pin_the_provider_to_them():
    env = {"OPENAI_API_KEY": "sk-real-key-9999"}
    config = load_config({"providers": {"openai": {"api_key": ["sk-sbx-aaaa", "sk-sbx-bbbb"]}}}, env=env)
    assert [k.id for k in config.providers["openai"].keys] == ["…aaaa", "…bbbb"]  # the real key is not sent there


def test_secret_like_values_are_described_not_echoed_in_config_errors():
    key = "AIzaSyD-abcdefghijklmnopqrstuvwxyz12345"
    with pytest.raises(ConfigError) as caught:
        load_config({"providers": {"gemini": {"apikey": key, "api_key_env": key}}}, env={})
    text = str(caught.value)
    assert key not in text and "39-character string" in text
    assert "NAME of an environment variable" in text


@pytest.mark.parametrize("bad", [{"rpm": float("inf")}, {"rpm": 0.5}, {"tpm": float("nan")}, {"kind": ["openai"]}])
def test_limits_must_be_finite_and_kinds_strings(bad):
    with pytest.raises(ConfigError):
        load_config({"providers": {"local": {"base_url": "http://127.0.0.1:1/v1", **bad}}}, env={})


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEYS = st.sampled_from(["defaults", "providers", "models", "pools", "concurrency", "timeout_s", "max_attempts",
                         "rpm", "tpm", "rpd", "ash", "limiter", "api_key", "api_key_env", "base_url", "kind",
                         "openai", "groq", "custom", "models", "openai/gpt-4.1", "context_window", "priority",
                         "learn_limits", "cache", "fallback", "provider_order"]) | st.text(max_size=12)
_VALUES = (st.none() | st.booleans() | st.integers(min_value=-10**20, max_value=10**20)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["http://127.0.0.1:1/v1", "sliding_window", "OPENAI_API_KEY", "sk-" + "a" * 30]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.recursive(_VALUES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=5),
                        max_leaves=25).filter(lambda d: isinstance(d, dict)))
def test_any_config_document_loads_or_is_a_config_error(doc) -> None:
    try:
        config = load_config({k: v for k, v in doc.items()}, env={})
    except ConfigError as exc:
        assert str(exc) and "sk-" + "a" * 30 not in str(exc)  # a secret-like value is described, never echoed
    else:
        assert config.providers


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: ("[defaults]\n" + t).encode("utf-8", "surrogatepass")))
def test_any_bytes_as_a_config_file_load_or_are_a_config_error(raw) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "nbfanout.toml"
        path.write_bytes(raw)
        try:
            load_config(path, env={})
        except ConfigError as exc:
            assert str(path) in str(exc)


def test_the_shared_table_is_checked_and_its_url_can_come_from_the_environment(tmp_path):
    path = tmp_path / "nbfanout.toml"
    path.write_text('[shared]\nurl = "http://cache:6379"\non_unavailable = "ignore"\nlease_s = -1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    text = str(err.value)
    assert str(path) in text
    assert "shared.url" in text and "redis://" in text
    assert "shared.on_unavailable" in text and '"local"' in text
    assert "shared.lease_s" in text and "positive number of seconds" in text
    with pytest.raises(ConfigError, match=r"shared\.url.*NBFANOUT_REDIS_URL"):
        load_config({"shared": {}}, env={})
    secret_url = "redis://team:pw-hunter2@cache:6379/1"
    config = load_config({"shared": {"namespace": "evals"}}, env={"NBFANOUT_REDIS_URL": secret_url})
    assert config.shared is not None and config.shared.url == secret_url and config.shared.namespace == "evals"
    assert "hunter2" not in repr(config.shared) and "team:***@cache:6379" in config.shared.shown
    assert load_config({}, env={"NBFANOUT_REDIS_URL": secret_url}).shared is None  # no [shared]: nothing changes


def test_batch_apis_come_from_the_catalog_and_a_config_can_turn_them_off_on_or_tune_them(tmp_path):
    config = load_config(env={})
    assert {p: config.providers[p].batch.api for p in ("openai", "anthropic", "gemini", "groq", "together")} == {
        "openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "groq": "openai", "together": "openai"}
    assert all(config.providers[p].batch.source for p in ("openai", "anthropic", "gemini", "groq", "together"))
    assert (config.providers["mistral"].batch.api, config.providers["openrouter"].batch.api) == ("mistral", "openrouter")
    assert config.providers["mistral"].batch.source and config.providers["openrouter"].batch.source
    assert config.providers["deepseek"].batch is None  # a provider with no batch API
    tuned = load_config({"providers": {
        "openai": {"batch": {"poll_s": 60}},
        "anthropic": {"batch": False},
        "mistral": {"batch": True},  # on, as the catalog has it: Mistral's own batch jobs, not OpenAI's
        "local": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "x", "models": ["m"], "batch": True},
    }, "models": {"openai/gpt-4o-mini": {"batch_input_price": 0.01}}}, env={})
    openai = tuned.providers["openai"].batch
    assert (openai.poll_s, openai.max_requests, openai.price_factor) == (60.0, 50_000, 0.5)  # the rest is the catalog's
    assert tuned.providers["anthropic"].batch is None
    assert tuned.providers["mistral"].batch == config.providers["mistral"].batch
    assert tuned.providers["local"].batch.api == "openai"
    mini = tuned.models["openai/gpt-4o-mini"]
    assert mini.batch_cost(1_000_000, 1_000_000, 0.5) == pytest.approx(0.01 + mini.output_price / 2)

    path = tmp_path / "nbfanout.toml"
    path.write_text('[providers.openai.batch]\npoll_s = "often"\n\n[providers.together.batch]\nmax_jobs = 3\n\n'
                    '[providers.gemini]\nbatch = "yes"\n\n[providers.groq.batch]\nprice_factor = 2\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    text = str(caught.value)
    assert f"{path}: providers.openai.batch.poll_s: expected a positive number, found 'often'" in text
    assert f"{path}: providers.together.batch: unknown keys ['max_jobs']" in text
    assert "providers.gemini.batch" in text and "true, false, or a table" in text
    assert "providers.groq.batch.price_factor" in text and "fraction of the live price" in text
