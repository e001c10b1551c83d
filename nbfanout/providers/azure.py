"""Azure OpenAI: the OpenAI wire format behind deployment URLs, an ``api-key`` header and an api-version.

``base_url`` is the resource's endpoint (``https://RESOURCE.openai.azure.com``); a model's id is
the *deployment* name the user gave it, so a call is
``POST {base}/openai/deployments/{deployment}/chat/completions?api-version=V`` with the key in
``api-key`` (learn.microsoft.com/azure/ai-services/openai/reference, "Chat completions"; the
version comes from the provider's ``api_version``, default ``config.AZURE_API_VERSION``). Bodies
and answers are OpenAI's, so everything else is the OpenAI adapter's. Rate limits are per
deployment: 429s say "Please retry after N seconds" and carry ``retry-after`` /
``retry-after-ms``; 200s carry ``x-ratelimit-remaining-requests`` and ``-tokens`` (no limit or
reset), which the budgets read as the remaining count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from nbfanout.providers._http import join_url
from nbfanout.providers.base import ChatRequest, Endpoint
from nbfanout.providers.openai import OpenAIAdapter

__all__ = ["AzureOpenAIAdapter"]


class AzureOpenAIAdapter(OpenAIAdapter):
    """Chat completions and model listing for an Azure OpenAI resource."""

    wire = "azure"

    def headers(self, endpoint: Endpoint) -> dict[str, str]:
        return {"api-key": endpoint.api_key}

    def chat_url(self, endpoint: Endpoint, request: ChatRequest, *, stream: bool) -> tuple[str, dict[str, str]]:
        path = f"openai/deployments/{quote(request.model, safe='')}/chat/completions"
        return join_url(endpoint.base_url, path), dict(endpoint.params)

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body = super().chat_body(request, stream=stream)
        body.pop("model", None)  # the deployment in the URL is the model
        return body

    async def list_models(
        self, client: httpx.AsyncClient, endpoint: Endpoint, *, timeout: float | None = None
    ) -> list[str]:
        """The resource's models from ``GET {base}/openai/models?api-version=V`` (Azure's "Models - List")."""
        payload = await self._get_json(client, endpoint, join_url(endpoint.base_url, "openai/models"),
                                       params=dict(endpoint.params), timeout=timeout)
        data = payload.get("data") if isinstance(payload, Mapping) else None
        if not isinstance(data, list):
            raise self._invalid(endpoint, 200, "the model list has no 'data' array")
        return [m["id"] for m in data if isinstance(m, Mapping) and isinstance(m.get("id"), str)]
