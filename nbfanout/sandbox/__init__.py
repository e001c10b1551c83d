"""A simulated multi-provider LLM server (real HTTP, on loopback) so nbfanout runs with no keys.

It speaks the OpenAI chat-completions and transcription, Anthropic messages and Gemini
generateContent wire formats (and, for providers whose scenario says so, their batch APIs), enforces each scenario's RPM / TPM / RPD / concurrency
limits exactly, answers deterministically after realistic latencies, injects faults with
each provider's own status codes, headers and bodies, and keeps a ledger of what happened.

    from nbfanout.sandbox import start_sandbox
    with start_sandbox("seed15") as sb:
        fx = Fanout(sb.config)
        ...
        sb.stats()["models"]["openrouter/deepseek/deepseek-r1-0528:free"]

Built-in scenarios: ``seed15`` (the 15-model run of the seeds, failure included),
``storm`` (every fault kind, every wire), ``fast`` (no limits, ~no latency),
``batch_token_bucket`` / ``batch_sliding_window`` / ``batch_fixed_window`` /
``batch_per_second`` (500 prompts x 5 models against one limiter shape each),
``batch_headers`` (the token-bucket batch with every limit hidden) and ``failover``
(a pool whose first model refuses for the first 30 s), ``batch_api`` (OpenAI, Anthropic and
Gemini batch APIs beside modest live limits; see ``batches.py``).
In-process use without a socket: ``httpx.ASGITransport(app=create_app(...))``.
"""

from __future__ import annotations

from nbfanout.sandbox.app import SandboxState, create_app
from nbfanout.sandbox.scenario import (
    BUILTIN_SCENARIOS,
    LowerBound,
    Scenario,
    ScenarioError,
    load_scenario,
    lower_bound_s,
    parse_scenario,
)
from nbfanout.sandbox.server import Sandbox, config_to_toml, run_server, start_sandbox, write_config

__all__ = [
    "BUILTIN_SCENARIOS",
    "LowerBound",
    "Sandbox",
    "SandboxState",
    "Scenario",
    "ScenarioError",
    "config_to_toml",
    "create_app",
    "load_scenario",
    "lower_bound_s",
    "parse_scenario",
    "run_server",
    "start_sandbox",
    "write_config",
]
