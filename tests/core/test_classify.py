"""classify_error against real provider failures, each with its public source.

Bodies are the JSON the provider sent, as quoted in the cited issue or documentation page
(SDK reprs such as ``{'error': {...}}`` are written back as the JSON on the wire; request
ids and organisation ids are kept or shortened, never invented).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from classify_cases import C, Case, anthropic_error, check, epoch, google_error, openai_error, sdk_wrapped

from nbfanout.core._classify import _classify
from nbfanout.core.errors import ErrorCategory, ErrorInfo, LimitHint, classify_error





GEMINI_HELP = {"@type": "type.googleapis.com/google.rpc.Help",
               "links": [{"description": "Learn more about Gemini API quotas",
                          "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}

CASES = [
    # ---------------------------------------------------------------- OpenAI
    # https://github.com/openai/codex/issues/88
    Case("openai-tpm-429", "openai", 429, openai_error(
        "Rate limit reached for o4-mini in organization org-******* on tokens per min (TPM): Limit 200000, "
        "Used 162960, Requested 42288. Please try again in 1.574s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.", "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=1.574, hint=LimitHint("tpm", limit=200000, requested=42288, used=162960),
        code="rate_limit_exceeded"),
    # https://github.com/Pythagora-io/gpt-pilot/issues/17
    Case("openai-6ms", "openai", 429, openai_error(
        "Rate limit reached for 10KTPM-200RPM in organization org-WyXXXXXXXXX on tokens per min. Limit: 10000 / "
        "min. Please try again in 6ms. Contact us through our help center at help.openai.com if you continue to "
        "have issues.", "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=0.006, hint=LimitHint("tpm", limit=10000)),
    # https://github.com/semanser/codel/issues/72
    Case("openai-18s", "openai", 429, openai_error(
        "Rate limit reached for gpt-4o in organization XXXXXXXXX on tokens per min (TPM): Limit 30000, Used 14567, "
        "Requested 24754. Please try again in 18.642s. Visit https://platform.openai.com/account/rate-limits to "
        "learn more.", "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=18.642, hint=LimitHint("tpm", limit=30000, requested=24754, used=14567)),
    # Body: https://github.com/stanford-crfm/helm/issues/97 (no wait in the text); headers as quoted in
    # https://thoughtbot.com/blog/openai-rate-limits ("x-ratelimit-reset-tokens: 6m0s") — the exhausted
    # window's reset is the wait.
    Case("openai-reset-header-6m0s", "openai", 429, openai_error(
        "Rate limit reached for tokens. Limit: 150000.000000 / min. Current: 176000.000000 / min. Contact "
        "support@openai.com if you continue to have issues.", "tokens", None),
        C.RATE_LIMIT, retry=360.0, hint=LimitHint("tpm", limit=150000, used=176000),
        headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s",
                 "x-ratelimit-remaining-requests": "199", "x-ratelimit-reset-requests": "1s"}),
    # https://github.com/ChatGPTNextWeb/NextChat/issues/4101
    Case("openai-insufficient-quota", "openai", 429, openai_error(
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota", "insufficient_quota"),
        C.QUOTA_EXHAUSTED, code="insufficient_quota"),
    # https://github.com/ChatGPTNextWeb/NextChat/issues/1792 (older body: code null, type carries it)
    Case("openai-insufficient-quota-type-only", "openai", 429, openai_error(
        "You exceeded your current quota, please check your plan and billing details.", "insufficient_quota", None),
        C.QUOTA_EXHAUSTED, code="insufficient_quota"),
    # https://github.com/crewAIInc/crewAI-examples/issues/121
    Case("openai-context-8192", "openai", 400, openai_error(
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 8227 tokens. "
        "Please reduce the length of the messages.", "invalid_request_error", "context_length_exceeded", "messages"),
        C.CONTEXT_LENGTH, hint=LimitHint("request_tokens", limit=8192, requested=8227),
        code="context_length_exceeded"),
    # https://github.com/bytedance/deer-flow/issues/310
    Case("openai-context-128k", "openai", 400, openai_error(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 202868 tokens "
        "(202767 in the messages, 101 in the functions). Please reduce the length of the messages or functions.",
        "invalid_request_error", "context_length_exceeded", "messages"),
        C.CONTEXT_LENGTH, hint=LimitHint("request_tokens", limit=128000, requested=202868)),
    # https://github.com/timkmecl/chatgpt-vscode/issues/45
    Case("openai-model-not-found", "openai", 404, openai_error(
        "The model `gpt-4` does not exist or you do not have access to it.", "invalid_request_error",
        "model_not_found"),
        C.NOT_FOUND, code="model_not_found"),
    # https://github.com/chatanywhere/GPT_API_free/issues/62 — the echoed key is cut to its last four characters
    Case("openai-invalid-key", "openai", 401, openai_error(
        "Incorrect API key provided: sk-VKMIs***************************************wjh3. You can find your API "
        "key at https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"),
        C.AUTH, code="invalid_api_key", contains="Incorrect API key provided: …wjh3."),
    # https://github.com/alan-turing-institute/t0-1/issues/69
    Case("openai-invalid-prompt-flagged", "openai", 400, openai_error(
        "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try again with "
        "a different prompt: https://platform.openai.com/docs/guides/reasoning#advice-on-prompting",
        "invalid_request_error", "invalid_prompt"),
        C.CONTENT_POLICY, code="invalid_prompt"),
    # https://github.com/songquanpeng/one-api/issues/737
    Case("openai-dalle-safety", "openai", 400, json.dumps({"error": {
        "code": "content_policy_violation",
        "message": "Your request was rejected as a result of our safety system. Your prompt may contain text that "
                   "is not allowed by our safety system.",
        "param": None, "type": "invalid_request_error"}}),
        C.CONTENT_POLICY, code="content_policy_violation"),
    # https://github.com/openai/openai-cua-sample-app/issues/54
    Case("openai-500", "openai", 500, openai_error(
        "The server had an error processing your request. Sorry about that! You can retry your request, or contact "
        "us through our help center at help.openai.com if you keep seeing this error. (Please include the request "
        "ID req_540c6eaab7f4556b2baa22bcba915d51 in your email.)", "server_error", None),
        C.SERVER_ERROR, code="server_error"),
    # https://github.com/ikechan8370/chatgpt-plugin/issues/125
    Case("openai-503-overloaded", "openai", 503, openai_error(
        "That model is currently overloaded with other requests. You can retry your request, or contact us through "
        "our help center at help.openai.com if the error persists. (Please include the request ID "
        "500d9fff2057e4af93a280f67002c342 in your message.)", "server_error", None),
        C.OVERLOADED),
    # https://github.com/yoheinakajima/babyagi/issues/64 (Cloudflare error page, shortened)
    Case("openai-502-cloudflare-html", "openai", 502,
         '<!DOCTYPE html>\n <html class="no-js" lang="en-US">\n<head>\n\n<title>api.openai.com | 502: Bad gateway'
         '</title>\n<meta charset="UTF-8" />\n</head>\n<body><div id="cf-wrapper"><h1>Bad gateway</h1>'
         "<p>The web server reported a bad gateway error.</p></div></body></html>",
         C.SERVER_ERROR, contains="HTTP 502 with an HTML body from a gateway (api.openai.com | 502: Bad gateway)"),
    # https://github.com/n3d1117/chatgpt-telegram-bot/issues/637
    Case("openai-502-nginx-html", "openai", 502,
         "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway</h1></center>\n"
         "<hr><center>cloudflare</center>\n",
         C.SERVER_ERROR, contains="HTML body from a gateway (502 Bad Gateway)"),
    # https://github.com/vanna-ai/vanna-flask/issues/11 — one request larger than the whole TPM budget
    Case("openai-request-too-large-429", "openai", 429, openai_error(
        "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 342389. The input or output "
        "tokens must be reduced in order to run successfully.", "tokens", "rate_limit_exceeded"),
        C.CONTEXT_LENGTH, hint=LimitHint("tpm", limit=30000, requested=342389)),
    # ---------------------------------------------------------------- Anthropic
    # https://github.com/anthropics/claude-code/issues/5184
    Case("anthropic-529", "anthropic", 529, anthropic_error("overloaded_error", "Overloaded"),
         C.OVERLOADED, code="overloaded_error"),
    # https://github.com/anthropics/claude-code/issues/39757 — read by content under an unknown provider id
    Case("anthropic-529-unknown-provider", "my-claude-proxy", 529, anthropic_error(
        "overloaded_error", "Overloaded. https://docs.claude.com/en/api/errors", "req_011CZTGFbArQvnRwr6evz8ca"),
        C.OVERLOADED, code="overloaded_error"),
    # https://github.com/cline/cline/issues/42
    Case("anthropic-per-minute-tokens", "anthropic", 429, anthropic_error(
        "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit "
        "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. Please "
        "reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales "
        "at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase."),
        C.RATE_LIMIT, hint=LimitHint("tpm"), code="rate_limit_error"),
    # https://github.com/bhouston/mycoder/issues/62
    Case("anthropic-org-itpm", "anthropic", 429, anthropic_error(
        "rate_limit_error", "This request would exceed the rate limit for your organization "
        "(d3f27ff7-9afe-4ee2-9645-76ecfc73c2b7) of 40,000 input tokens per minute. For details, refer to: "
        "https://docs.anthropic.com/en/api/rate-limits. You can see the response headers for current usage. Please "
        "reduce the prompt length or the maximum tokens requested, or try again later."),
        C.RATE_LIMIT, hint=LimitHint("tpm", limit=40000)),
    # https://github.com/anthropics/claude-code/issues/4684
    Case("anthropic-credit-balance", "anthropic", 400, anthropic_error(
        "invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits."),
        C.QUOTA_EXHAUSTED, code="invalid_request_error"),
    # https://github.com/eyaltoledano/claude-task-master/issues/222
    Case("anthropic-invalid-key", "anthropic", 401, anthropic_error("authentication_error", "invalid x-api-key"),
         C.AUTH, code="authentication_error"),
    # https://github.com/mattermost/mattermost-plugin-agents/issues/257
    Case("anthropic-model-404", "anthropic", 404, anthropic_error(
        "not_found_error", "model: claude-3-5-sonnet-20241022 "),
        C.NOT_FOUND, code="not_found_error"),
    # https://github.com/anthropics/claude-code/issues/12186
    Case("anthropic-prompt-too-long", "anthropic", 400, anthropic_error(
        "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum", "req_011CVQe1dLrGNMJyE1ghG1av"),
        C.CONTEXT_LENGTH, hint=LimitHint("request_tokens", limit=200000, requested=208310)),
    # https://github.com/anthropics/claude-code/issues/8121 — a 500 that says what it is
    Case("anthropic-500-overloaded", "anthropic", 500, json.dumps(
        {"type": "error", "error": {"type": "api_error", "message": "Overloaded"}, "request_id": None}),
        C.OVERLOADED, code="api_error"),
    # https://github.com/ChatGPTNextWeb/NextChat/issues/4964 — a parameter error, not a context overflow
    Case("anthropic-max-tokens-param", "anthropic", 400, anthropic_error(
        "invalid_request_error", "max_tokens: 10000 > 4096, which is the maximum allowed number of output tokens for "
        "claude-3-5-sonnet-20240620"),
        C.BAD_REQUEST, hint=LimitHint("max_output_tokens", limit=4096, requested=10000)),
    # ---------------------------------------------------------------- Gemini
    # https://github.com/diegosouzapw/OmniRoute/issues/9504 — per-day free tier: retryDelay says 36s, the quota
    # resets at midnight Pacific (ai.google.dev/gemini-api/docs/rate-limits). 06:14:23Z = 23:14:23 PDT.
    Case("gemini-per-day-free-tier", "gemini", 429, json.dumps(google_error(
        429, "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
        "head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: "
        "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 20, model: gemini-3.6-flash"
        "\nPlease retry in 36.429760048s.", "RESOURCE_EXHAUSTED", [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                 "quotaDimensions": "[MaxDepth]", "quotaValue": "20"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36s"}])),
        C.RATE_LIMIT, retry=2736.372, hint=LimitHint("rpd", limit=20), code="RESOURCE_EXHAUSTED",
        now=epoch("2026-08-01T06:14:23.628Z")),
    # https://github.com/voideditor/void/issues/557 — per-day, retryDelay 5s; noon UTC = 05:00 PDT → 19 h left
    Case("gemini-per-day-exp-model", "gemini", 429, sdk_wrapped(google_error(
        429, "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.", "RESOURCE_EXHAUSTED", [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                 "quotaDimensions": {"model": "gemini-2.0-pro-exp", "location": "global"}, "quotaValue": "25"}]},
            GEMINI_HELP, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "5s"}]),
        429, "Too Many Requests"),
        C.RATE_LIMIT, retry=68400.0, hint=LimitHint("rpd", limit=25), now=epoch("2025-05-12T12:00:00Z")),
    # https://github.com/RooCodeInc/Roo-Code/issues/3883 — per-minute input tokens, nested by the SDK
    Case("gemini-per-minute-tokens", "gemini", 429, sdk_wrapped(google_error(
        429, "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.", "RESOURCE_EXHAUSTED", [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
                 "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                 "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"}, "quotaValue": "250000"}]},
            GEMINI_HELP, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}]),
        429, "Too Many Requests"),
        C.RATE_LIMIT, retry=26.0, hint=LimitHint("tpm", limit=250000), code="RESOURCE_EXHAUSTED"),
    # https://github.com/browserbase/mcp-server-browserbase/issues/129 (body as quoted, up to its truncation)
    Case("gemini-paid-tier-tpm", "gemini", 429, json.dumps(google_error(
        429, "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
        "head to: https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: "
        "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count, limit: 4000000\n"
        "Please retry in 47.434392449s.", "RESOURCE_EXHAUSTED", [
            GEMINI_HELP,
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
                 "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute",
                 "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"}, "quotaValue": "4000000"}]}])),
        C.RATE_LIMIT, retry=47.434392449, hint=LimitHint("tpm", limit=4000000)),
    # https://github.com/googleapis/python-genai/issues/2065
    Case("gemini-resource-exhausted-bare", "gemini", 429, json.dumps(google_error(
        429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")),
        C.RATE_LIMIT, code="RESOURCE_EXHAUSTED"),
    # https://github.com/tech-shrimp/gemini-playground/issues/10 — a limit of 0: no wait will ever admit it
    Case("gemini-limit-zero", "gemini", 429, json.dumps(google_error(
        429, "Quota exceeded for quota metric 'Generate Content API requests per minute' and limit 'GenerateContent "
        "request limit per minute for a region' of service 'generativelanguage.googleapis.com' for consumer "
        "'project_number:391029737820'.", "RESOURCE_EXHAUSTED", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
             "domain": "googleapis.com", "metadata": {
                 "service": "generativelanguage.googleapis.com", "quota_location": "us-west4",
                 "quota_limit_value": "0", "quota_limit": "GenerateContentRequestsPerMinutePerProjectPerRegion",
                 "quota_metric": "generativelanguage.googleapis.com/generate_content_requests",
                 "consumer": "projects/391029737820"}},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Request a higher quota limit.",
                 "url": "https://cloud.google.com/docs/quotas/help/request_increase"}]}])),
        C.QUOTA_EXHAUSTED, hint=LimitHint("rpm", limit=0), code="RATE_LIMIT_EXCEEDED"),
    # https://github.com/cequence-io/openai-scala-client/issues/109
    Case("gemini-api-key-invalid", "gemini", 400, json.dumps(google_error(
        400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": "API key not valid. Please pass a valid API key."}])),
        C.AUTH, code="API_KEY_INVALID"),
    # https://github.com/lobehub/lobehub/issues/9728
    Case("gemini-503-overloaded", "gemini", 503, json.dumps(google_error(
        503, "The model is overloaded. Please try again later.", "UNAVAILABLE")),
        C.OVERLOADED, code="UNAVAILABLE"),
    # https://github.com/google-gemini/gemini-cli/issues/3665
    Case("gemini-500-internal", "gemini", 500, sdk_wrapped(google_error(
        500, "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting", "INTERNAL"), 500, "Internal Server Error"),
        C.SERVER_ERROR, code="INTERNAL"),
    # https://github.com/wwardaww/gnome-gemini-ai/issues/22
    Case("gemini-model-404", "gemini", 404, json.dumps(google_error(
        404, "models/gemini-pro is not found for API version v1beta, or is not supported for generateContent. Call "
        "ListModels to see the list of available models and their supported methods.", "NOT_FOUND")),
        C.NOT_FOUND, code="NOT_FOUND"),
    # https://github.com/poenl/gemini-api/issues/4
    Case("gemini-location", "gemini", 400, json.dumps(google_error(
        400, "User location is not supported for the API use.", "FAILED_PRECONDITION")),
        C.PERMISSION, code="FAILED_PRECONDITION"),
    # https://github.com/continuedev/continue/issues/11541 — the key itself is burnt: replace it
    Case("gemini-leaked-key", "gemini", 403, sdk_wrapped(google_error(
        403, "Your API key was reported as leaked. Please use another API key.", "PERMISSION_DENIED"),
        403, "Forbidden"),
        C.AUTH, code="PERMISSION_DENIED"),
    # https://github.com/google/generative-ai-docs/issues/356 — the provider echoes the key
    Case("gemini-consumer-suspended", "gemini", 403, json.dumps(google_error(
        403, "Permission denied: Consumer 'api_key:AIzaSyAhTarnL1PaQn_yu_uVf0gia9wUyJx8RSI' has been suspended.",
        "PERMISSION_DENIED", [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED",
                               "domain": "googleapis.com", "metadata": {
                                   "service": "generativelanguage.googleapis.com",
                                   "consumer": "projects/578829824020"}}])),
        C.PERMISSION, code="CONSUMER_SUSPENDED", contains="Consumer 'api_key:…8RSI' has been suspended."),
    # https://github.com/google-gemini/gemini-cli/issues/6678 — Vertex wraps the error in a list
    Case("gemini-input-token-count", "gemini", 400, json.dumps([{"error": {
        "code": 400,
        "message": "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
        "errors": [{"message": "The input token count (1200293) exceeds the maximum number of tokens allowed "
                               "(1048576).", "domain": "global", "reason": "badRequest"}],
        "status": "INVALID_ARGUMENT"}}]),
        C.CONTEXT_LENGTH, hint=LimitHint("request_tokens", limit=1048576, requested=1200293)),
    # https://github.com/SuzumiyaAkizuki/ComfyUI-NewBie-LLM-Formatter/issues/3 — OpenAI-compatible endpoint list
    Case("gemini-openai-compat-list", "gemini", 400, json.dumps([{"error": {
        "code": 400, "message": 'Invalid JSON payload received. Unknown name "reasoning": Cannot find field.',
        "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"description": 'Invalid JSON payload received. Unknown name "reasoning": Cannot find field.'}]}]}}]),
        C.BAD_REQUEST, code="INVALID_ARGUMENT", contains='Unknown name "reasoning"'),
    # https://github.com/badrisnarayanan/antigravity-claude-proxy/issues/197
    Case("gemini-capacity-exhausted", "gemini", 503, json.dumps(google_error(
        503, "No capacity available for model gemini-3-pro-high on the server", "UNAVAILABLE", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "MODEL_CAPACITY_EXHAUSTED",
             "domain": "cloudcode-pa.googleapis.com", "metadata": {"model": "gemini-3-pro-high"}},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "40s"}])),
        C.OVERLOADED, retry=40.0, code="MODEL_CAPACITY_EXHAUSTED"),
    # ---------------------------------------------------------------- Groq
    # https://github.com/openinterpreter/openinterpreter/issues/408
    Case("groq-tpm", "groq", 429, openai_error(
        "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01hs26sgxde6dva0eke39336sv` on "
        "tokens per minute (TPM): Limit 6000, Used 3513, Requested 3166. Please try again in 6.780999999s. Visit "
        "https://console.groq.com/docs/rate-limits for more information.", "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=6.780999999, hint=LimitHint("tpm", limit=6000, requested=3166, used=3513)),
    # https://github.com/elizaOS/eliza/issues/4040
    Case("groq-tpm-4.77s", "groq", 429, openai_error(
        "Rate limit reached for model `llama-3.1-8b-instant` in organization `org_01j5b4pz9jff492fq686vypsx6` "
        "service tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 5034, Requested 1443. Please try "
        "again in 4.77s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
        "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=4.77, hint=LimitHint("tpm", limit=6000, requested=1443, used=5034)),
    # https://github.com/assafelovic/gpt-researcher/issues/985 — 413: can never fit the per-minute budget
    Case("groq-413", "groq", 413, openai_error(
        "Request too large for model `llama-3.1-70b-versatile` in organization `org_01hw8f0aa0ekmrn70ffm2zkdv1` on "
        "tokens per minute (TPM): Limit 6000, Requested 14368, please reduce your message size and try again. "
        "Visit https://console.groq.com/docs/rate-limits for more information.", "tokens", "rate_limit_exceeded"),
        C.CONTEXT_LENGTH, hint=LimitHint("tpm", limit=6000, requested=14368), code="rate_limit_exceeded"),
    # https://github.com/continuedev/continue/issues/10920
    Case("groq-tpd", "groq", 429, openai_error(
        "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01kjh7p9n8f1qs6nz2bz77vy6b` "
        "service tier `on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. Please try "
        "again in 9m38.016s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
        "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=578.016, hint=LimitHint("tpd", limit=100000, requested=3619, used=97050)),
    # https://github.com/danielmiessler/Fabric/issues/364 — a 429 whose request alone exceeds the limit
    Case("groq-requested-over-limit", "groq", 429, openai_error(
        "Rate limit reached for model `llama3-70b-8192` in organization `org_01hrsvc1b8ey0anvbgha0xckf2` on tokens "
        "per minute (TPM): Limit 7000, Used 0, Requested ~12903. Please try again in 50.597142857s. Visit "
        "https://console.groq.com/docs/rate-limits for more information.", "tokens", "rate_limit_exceeded"),
        C.CONTEXT_LENGTH, hint=LimitHint("tpm", limit=7000, requested=12903, used=0)),
    # https://github.com/bklieger-groq/stockbot-on-groq/issues/46 — the window name is blank in the message
    Case("groq-unnamed-window", "groq", 429, openai_error(
        "Rate limit reached for model `llama3-70b-8192` in organization `org_01hqm053avffh8w60ayqm1kr4a` on : Limit "
        "500000, Used 500370, Requested 252. Please try again in 1m47.5854s. Visit "
        "https://console.groq.com/docs/rate-limits for more information.", "tokens", "rate_limit_exceeded"),
        C.RATE_LIMIT, retry=107.5854),
    # https://github.com/ag5826000/resume-commentor/issues/4
    Case("groq-invalid-key", "groq", 401, openai_error("Invalid API Key", "invalid_request_error", "invalid_api_key"),
         C.AUTH, code="invalid_api_key"),
    # ---------------------------------------------------------------- OpenRouter
    # https://github.com/open-assistant-org/open-assistant/issues/80
    Case("openrouter-402-credits", "openrouter", 402, json.dumps({"error": {
        "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits", "code": 402,
        "metadata": {"limit_source": "openrouter_credits",
                     "remedy_hint": "Add credits at https://openrouter.ai/settings/credits, or lower max_tokens / "
                                    "prompt size to fit your remaining balance."}}}),
        C.QUOTA_EXHAUSTED),
    # https://github.com/astrio-labs/forall/issues/76
    Case("openrouter-402-afford", "openrouter", 402, json.dumps({"error": {
        "message": "This request requires more credits, or fewer max_tokens. You requested up to 64000 tokens, but "
                   "can only afford 2666. To increase, visit https://openrouter.ai/settings/credits and upgrade to a "
                   "paid account", "code": 402, "metadata": {"provider_name": None}},
        "user_id": "user_35tI40u3gKTMEMGS061Ov1xsUTj"}),
        C.QUOTA_EXHAUSTED, hint=LimitHint("request_tokens", limit=2666, requested=64000)),
    # https://github.com/Aider-AI/aider/issues/3550 — error inside an HTTP 200 stream; reset in epoch ms
    Case("openrouter-200-free-per-day", "openrouter", 200, json.dumps({"error": {
        "message": "Rate limit exceeded: free-models-per-day", "code": 429, "metadata": {
            "headers": {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": "1743292800000"}, "provider_name": "Google AI Studio"}},
        "user_id": "user_XXXXXXXXXXXXXXXXXXXXXXXXX"}),
        C.RATE_LIMIT, retry=3600.0, hint=LimitHint("rpd", limit=200, used=200), now=1743292800 - 3600),
    # https://github.com/Gitlawb/openclaude/issues/936 (body as quoted, up to its truncation)
    Case("openrouter-429-free-per-day", "openrouter", 429, json.dumps({"error": {
        "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per "
                   "day", "code": 429, "metadata": {"headers": {"X-RateLimit-Limit": "50",
                                                                "X-RateLimit-Remaining": "0"}}}}),
        C.RATE_LIMIT, hint=LimitHint("rpd", limit=50, used=50)),
    # https://github.com/musistudio/claude-code-router/issues/227
    Case("openrouter-401", "openrouter", 401, json.dumps(
        {"error": {"message": "No auth credentials found", "code": 401}}),
        C.AUTH),
    # https://github.com/langgenius/dify/issues/25946 — Google's error relayed in metadata.raw
    Case("openrouter-raw-google-location", "openrouter", 400, json.dumps({"error": {
        "message": "Provider returned error", "code": 400, "metadata": {
            "raw": json.dumps(google_error(400, "User location is not supported for the API use.",
                                           "FAILED_PRECONDITION"), indent=2),
            "provider_name": "Google AI Studio"}}, "user_id": "user_2w1oOBMEP614EibaDfRTkFgDgYI"}),
        C.PERMISSION, code="FAILED_PRECONDITION",
        contains="Provider returned error: User location is not supported for the API use."),
    # https://github.com/vercel/ai/issues/2698 — Gemini's 429 streamed by OpenRouter inside an HTTP 200
    Case("openrouter-200-nested-google", "openrouter", 200, json.dumps({"error": {
        "message": json.dumps(google_error(429, "Resource has been exhausted (e.g. check quota).",
                                           "RESOURCE_EXHAUSTED"), indent=2) + "\n", "code": 429}}),
        C.RATE_LIMIT, code="RESOURCE_EXHAUSTED"),
    # ---------------------------------------------------------------- DeepSeek, Mistral, Together, xAI
    # Body: https://github.com/Aider-AI/aider/issues/4851; status: https://github.com/continuedev/continue/issues/9942
    Case("deepseek-402-balance", "deepseek", 402, json.dumps({"error": {
        "message": "Insufficient Balance", "type": "unknown_error", "param": None, "code": "invalid_request_error"}}),
        C.QUOTA_EXHAUSTED, contains="Insufficient Balance"),
    # https://github.com/evalstate/fast-agent/issues/621
    Case("deepseek-context", "deepseek", 400, openai_error(
        "This model's maximum context length is 131072 tokens. However, you requested 131134 tokens (122942 in the "
        "messages, 8192 in the completion). Please reduce the length of the messages or completion.",
        "invalid_request_error", "invalid_request_error"),
        C.CONTEXT_LENGTH, hint=LimitHint("request_tokens", limit=131072, requested=131134)),
    # https://github.com/pydantic/pydantic-ai/issues/1885
    Case("mistral-requests-rate", "mistral", 429, '{"message":"Requests rate limit exceeded"}', C.RATE_LIMIT),
    # https://github.com/cline/cline/issues/9085
    Case("mistral-rate-limited-1300", "mistral", 429, json.dumps(
        {"object": "error", "message": "Rate limit exceeded", "type": "rate_limited", "param": None, "code": "1300"}),
        C.RATE_LIMIT, code="rate_limited"),
    # https://github.com/togethercomputer/MoA/issues/27
    Case("together-60-qpm", "together", 429, openai_error(
        "You have been rate limited. Your rate limit is 60 queries per minute. Please navigate to "
        "https://api.together.xyz/settings/billing to upgrade to a paid plan.", "credit_limit", None),
        C.RATE_LIMIT, hint=LimitHint("rpm", limit=60)),
    # https://github.com/continuedev/continue/issues/10778 — the whole body is a JSON string
    Case("xai-json-string-body", "xai", 400,
         '"Incorrect API key provided: na***ys. You can obtain an API key from https://console.x.ai."',
         C.AUTH, contains="Incorrect API key provided"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_real_provider_errors(case: Case) -> None:
    check(case)


def test_at_least_45_sourced_cases() -> None:
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)


def test_reexported_from_errors() -> None:
    from nbfanout.core import _classify, errors

    assert errors.classify_error is _classify.classify_error


# ---------------------------------------------------------------- conventions


@pytest.mark.parametrize(
    ("body", "category", "text"),
    [
        ("ReadTimeout: The read operation timed out", C.TIMEOUT, "no response: timeout (ReadTimeout:"),
        ("ConnectTimeout: timed out", C.TIMEOUT, "no response: timeout"),
        ("ConnectError: [Errno 111] Connection refused", C.NETWORK, "no response: network error (ConnectError"),
        ("RemoteProtocolError: Server disconnected without sending a response.", C.NETWORK, "network error"),
        ("ReadError: [Errno 104] Connection reset by peer", C.NETWORK, "Connection reset by peer"),
        ("CancelledError", C.CANCELLED, "no response: cancelled"),
        (None, C.NETWORK, "no response: network error"),
        (b"", C.NETWORK, "no response: network error"),
    ],
)
def test_no_response_convention(body: str | bytes | None, category: ErrorCategory, text: str) -> None:
    info = classify_error("openai", None, None, body)
    assert info.category is category
    assert info.status is None
    assert text in info.message


@pytest.mark.parametrize(
    ("status", "body", "category", "text"),
    [
        (502, "", C.SERVER_ERROR, "HTTP 502 with an empty body"),
        (503, None, C.OVERLOADED, "HTTP 503 with an empty body"),
        (504, "<html><head><title>504 Gateway Time-out</title></head></html>", C.TIMEOUT, "504 Gateway Time-out"),
        (524, "<!DOCTYPE html><html><head><title>api.openai.com | 524: A timeout occurred</title></head></html>",
         C.TIMEOUT, "HTML body from a gateway"),
        (408, "", C.TIMEOUT, "HTTP 408"),
        (500, "Internal Server Error", C.SERVER_ERROR, "Internal Server Error"),
        (418, "", C.BAD_REQUEST, "HTTP 418"),
        (302, "", C.BAD_REQUEST, "HTTP 302"),
        (999, "", C.SERVER_ERROR, "HTTP 999"),
        (0, "", C.SERVER_ERROR, "HTTP 0"),
        (200, '{"id": "x", "choices": null}', C.SERVER_ERROR, "HTTP 200 without an answer"),
    ],
)
def test_status_and_gateway_bodies(status: int, body: str | None, category: ErrorCategory, text: str) -> None:
    info = classify_error("someprovider", status, {}, body)
    assert info.category is category
    assert text in info.message


def test_retry_after_headers_win_over_body_hints() -> None:
    body = openai_error("Rate limit reached ... Please try again in 7.66s.", "tokens", "rate_limit_exceeded")
    assert classify_error("groq", 429, {"Retry-After": "8"}, body).retry_after_s == 8.0
    assert classify_error("groq", 429, {"retry-after-ms": "1500"}, body).retry_after_s == 1.5
    assert classify_error("groq", 429, {}, body).retry_after_s == pytest.approx(7.66)


def test_retry_after_http_date_negative_and_huge() -> None:
    now = epoch("2015-10-21T07:20:00Z")
    date = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert classify_error("x", 429, date, "", now=now).retry_after_s == 480.0
    assert classify_error("x", 429, date, "", now=now + 3600).retry_after_s == 0.0
    assert classify_error("x", 429, {"retry-after": "-5"}, "").retry_after_s is None
    assert classify_error("x", 429, {"retry-after": "1e400"}, "").retry_after_s is None
    assert classify_error("x", 429, {"retry-after": "99999999999"}, "").retry_after_s == 7 * 24 * 3600


def test_anthropic_429_waits_for_the_exhausted_window() -> None:
    # Header names and RFC 3339 resets as documented by Anthropic; the values are illustrative.
    headers = {"anthropic-ratelimit-requests-remaining": "12",
               "anthropic-ratelimit-requests-reset": "2025-08-21T12:41:00Z",
               "anthropic-ratelimit-tokens-remaining": "0",
               "anthropic-ratelimit-tokens-reset": "2025-08-21T12:41:30Z"}
    body = anthropic_error("rate_limit_error", "Your account has hit a rate limit.")
    info = classify_error("anthropic", 429, headers, body, now=epoch("2025-08-21T12:41:00Z"))
    assert info.category is C.RATE_LIMIT
    assert info.retry_after_s == 30.0


def test_not_retryable_errors_carry_no_wait() -> None:
    body = openai_error("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    info = classify_error("openai", 429, {"retry-after": "20"}, body)
    assert info.category is C.QUOTA_EXHAUSTED and info.retry_after_s is None


def test_anthropic_spend_limit_is_quota() -> None:
    # error.details.error_code as described in Microsoft's Dev Proxy page on Anthropic errors
    # (learn.microsoft.com/.../dev-proxy/concepts/anthropic-529-overloaded-error).
    body = json.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited",
                                                  "details": {"error_code": "enforced_spend_limit_reached"}}})
    info = classify_error("anthropic", 429, {"retry-after": "60"}, body)
    assert info.category is C.QUOTA_EXHAUSTED
    assert info.provider_code == "enforced_spend_limit_reached"


def test_sse_error_event_and_gemini_blocked_prompt() -> None:
    stream = "event: error\ndata: " + anthropic_error("overloaded_error", "Overloaded") + "\n\n"
    assert classify_error("anthropic", 200, {}, stream).category is C.OVERLOADED
    blocked = json.dumps({"promptFeedback": {"blockReason": "SAFETY"}})
    assert classify_error("gemini", 200, {}, blocked).category is C.CONTENT_POLICY


def test_headers_any_mapping_case_insensitive() -> None:
    import httpx

    body = "{}"
    for headers in ({"RETRY-AFTER": "3"}, httpx.Headers({"Retry-After": "3"}), [("retry-after", "3")]):
        assert classify_error("x", 429, headers, body).retry_after_s == 3.0  # type: ignore[arg-type]


# ---------------------------------------------------------------- redaction (nbfanout/_secrets.py)


def test_message_never_shows_a_key() -> None:
    key = "sk-proj-" + "Q" * 40 + "9z9z"
    body = openai_error(f"Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key")
    info = classify_error("openai", 401, None, body)
    assert key not in info.message and key[:12] not in info.message and "…9z9z" in info.message


# ---------------------------------------------------------------- robustness


ODD_BODIES: list[Any] = [
    b"\xff\xfe\xfa not utf-8 \x80", b"\x00\x00", "null", "true", "42", "-1e999", '"just a string"', "[]", "[[[[]]]]",
    "[" * 5000 + "]" * 5000, '{"error": null}', '{"error": 5}', '{"error": {"code": true, "message": [1, 2]}}',
    '{"error": {"code": "99999999999999999999999", "status": 7}}', '{"error": {"details": "nope"}}',
    '{"error": {"details": [1, "x", {"@type": "RetryInfo", "retryDelay": {"seconds": "x"}}]}}',
    '{"error": {"details": [{"@type": "QuotaFailure", "violations": "x"}]}}',
    '{"error": {"message": "{\\"error\\": {\\"message\\": \\"{\\\\\\"error\\\\\\": 1}\\"}}"}}',
    '{"error": {"metadata": {"raw": 12, "headers": "x"}}}',
    '{"error": {"metadata": {"headers": {"X-RateLimit-Reset": "x"}}}}',
    "data: {not json}\n\ndata: [1,2", "<html", "<html><title>" + "x" * 50_000, "Please try again in 99999999999h",
    '{"message": {"nested": "dict"}}', {"error": {"message": "a dict body"}}, ["list", "body"], 12345,
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=[f"odd{i}" for i in range(len(ODD_BODIES))])
@pytest.mark.parametrize("status", [None, 0, 200, 400, 429, 503, 529, 999, -1, 10**20])
def test_odd_inputs_never_raise(body: Any, status: int | None) -> None:
    info = _classify("p", status, {"retry-after": "-3", "x-ratelimit-reset": "garbage"}, body, now=None)
    assert isinstance(info, ErrorInfo) and isinstance(info.message, str)


@pytest.mark.parametrize("headers", [None, "junk", 42, [("a",)], [1, 2], {1: b"\xff"}, {"retry-after": None}])
def test_odd_headers_never_raise(headers: Any) -> None:
    assert isinstance(_classify("p", 429, headers, "{}", now=None), ErrorInfo)


def test_fuzz_random_bytes_and_json_fragments() -> None:
    rng = random.Random(20240611)
    fragments = ['{"error":', '{"type":"error",', '"message":', '"code":', "429", '"RESOURCE_EXHAUSTED"', "[", "]",
                 "{", "}", ",", '"retryDelay":"', "37s", '"', "Please try again in ", "6m0s", "Limit ", "Requested ",
                 "sk-", "AIza", "\\u0000", "data: ", "<html>", "null", "1e308"]
    for _ in range(2000):
        if rng.random() < 0.5:
            body: Any = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        else:
            body = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 30)))
        status = rng.choice([None, 200, 400, 401, 402, 403, 404, 413, 429, 500, 502, 503, 504, 529,
                             rng.randint(-5, 1000)])
        name = rng.choice(["retry-after", "Retry-After-Ms", "x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"])
        headers = {name: rng.choice(["1", "-1", "6m0s", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT", "", "x" * 300])}
        info = _classify(rng.choice(["openai", "", "weird/id"]), status, headers, body, now=1.7e9)
        assert isinstance(info, ErrorInfo)
        assert info.retry_after_s is None or 0 <= info.retry_after_s <= 7 * 24 * 3600
        assert isinstance(classify_error("p", status, headers, body), ErrorInfo)


# ---------------------------------------------------------------- properties (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PROVIDERS = st.sampled_from(["openai", "anthropic", "gemini", "groq", "openrouter", "together", "mistral",
                              "deepseek", "azure", "custom"])
_HEADER_NAMES = st.sampled_from(["retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens",
                                 "x-ratelimit-limit-requests", "anthropic-ratelimit-tokens-reset", "x-ratelimit-reset",
                                 "content-type", "x-request-id"]) | st.text(min_size=1, max_size=20)
_HEADER_VALUES = st.sampled_from(["1", "-3", "1e309", "nan", "inf", "0.5s", "2m0s", "99999999h", "Wed, 21 Oct 2015 07:28:00 GMT",
                                  "", "1ms", "garbage"]) | st.text(max_size=40)


def _json_bodies() -> st.SearchStrategy[str]:
    leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=60)
    doc = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["error", "message", "code", "type", "status", "details", "metadata", "retryDelay", "@type",
                         "violations", "quotaId", "raw", "headers"]) | st.text(max_size=10), inner, max_size=5),
        max_leaves=20)
    return doc.map(json.dumps)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(provider=_PROVIDERS, status=st.none() | st.integers(min_value=100, max_value=599) | st.integers(),
       headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=6),
       body=st.none() | _json_bodies() | st.text(max_size=200) | st.binary(max_size=200))
def test_classify_error_never_raises_and_always_names_a_category(provider, status, headers, body) -> None:
    info = classify_error(provider, status, headers, body)
    assert isinstance(info.category, ErrorCategory) and isinstance(info.message, str)
    assert info.retry_after_s is None or (info.retry_after_s >= 0 and info.retry_after_s == info.retry_after_s)
