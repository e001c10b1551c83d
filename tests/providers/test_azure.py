"""Azure OpenAI (providers/azure.py) against the sandbox's azure style: deployment URLs, the api-key
header, api-version, and Azure's own 429 and 401 bodies."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from nbfanout import Fanout

KEY = "0123456789abcdef0123456789ab4z9z"  # Azure keys are 32 hex-like characters


def scenario(limits: dict[str, Any]) -> dict[str, Any]:
    return {"name": "azure", "seed": 8, "providers": {"azure": {"style": "azure", "keys": [KEY], "models": {
        "gpt-4o-prod": {"limits": limits, "latency": {"base_ms": 100}, "output_tokens": [10, 20]}}}}}


class Recording(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.requests = inner, []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


@pytest.mark.looptime
@pytest.mark.parametrize("hidden", [False, True])
async def test_a_deployment_is_called_by_url_with_its_key_and_api_version_and_its_limit_kept(sandbox_app_factory, hidden):
    limits = {"rpm": 3, **({"hidden": ["rpm"]} if hidden else {})}
    app = sandbox_app_factory(scenario(limits), time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    recording = Recording(app.transport())
    fx = Fanout(app.config, transport=recording, learn=False)
    batch = await fx.map(["one", "two", "three", "four"], ["azure/gpt-4o-prod"], max_tokens=20)
    assert all(r.ok and r.text for r in batch.results)
    sent = recording.requests[0]
    assert sent.url.path == "/azure/openai/deployments/gpt-4o-prod/chat/completions"
    assert sent.url.params["api-version"] == "2024-10-21" and sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    refused = app.stats()["models"]["azure/gpt-4o-prod"]["rejected"].get("rpm", 0)
    assert refused <= (1 if hidden else 0)  # known: never refused; hidden: Azure's retry-after teaches it
    if hidden:
        retried = [a for r in batch.results for a in r.attempts if a.outcome == "rate_limit"]
        assert all("Please retry after" in a.message for a in retried)


@pytest.mark.looptime
async def test_a_wrong_key_is_auth_in_azures_words(sandbox_app_factory):
    app = sandbox_app_factory(scenario({}), time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    config = app.config
    config["providers"]["azure"]["api_key"] = "ffffffffffffffffffffffffffffffff"
    (result,) = await Fanout(config, transport=app.transport(), learn=False).run("hi", ["azure/gpt-4o-prod"])
    assert not result.ok and result.category == "auth" and result.error.status == 401
    assert "invalid subscription key" in result.error.message


def test_the_official_sdks_azure_client_reads_the_sandboxs_answers(sandbox_factory):
    import openai  # a dev dependency: the official SDK is the reference client
    sandbox = sandbox_factory(scenario({}))
    client = openai.AzureOpenAI(api_key=KEY, api_version="2024-10-21", azure_endpoint=f"{sandbox.url}/azure")
    answer = client.chat.completions.create(model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.AzureOpenAI(api_key="f" * 32, api_version="2024-10-21", azure_endpoint=f"{sandbox.url}/azure") \
            .chat.completions.create(model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.looptime
async def test_azure_is_built_in_with_its_endpoint_and_key_from_microsofts_variables(sandbox_app_factory):
    app = sandbox_app_factory(scenario({}), time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    endpoint = app.config["providers"]["azure"]["base_url"]
    config = {"providers": {"azure": {"models": ["gpt-4o-prod"]}}}  # a deployment: no kind, URL or key written here
    env = {"AZURE_OPENAI_ENDPOINT": endpoint, "AZURE_OPENAI_API_KEY": KEY}
    fx = Fanout(config, env=env, transport=app.transport(), learn=False)
    azure = fx.config.providers["azure"]
    assert (azure.wire, azure.base_url, azure.limits.limiter) == ("azure", endpoint, "per_second")
    (result,) = await fx.run("hi", ["azure/gpt-4o-prod"])
    assert result.ok and result.text
    # a key but no endpoint: that request fails at once, saying which variable to set; nothing is sent
    before = app.stats()["totals"]["requests"]
    no_endpoint = Fanout(config, env={"AZURE_OPENAI_API_KEY": KEY}, transport=app.transport(), learn=False)
    (missing,) = await no_endpoint.run("hi", ["azure/gpt-4o-prod"])
    assert not missing.ok and missing.category == "missing_key"
    assert "no endpoint for azure: set AZURE_OPENAI_ENDPOINT or base_url" in missing.error.message
    assert app.stats()["totals"]["requests"] == before
