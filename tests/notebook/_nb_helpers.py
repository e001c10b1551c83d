"""Helpers shared by the notebook tests (a uniquely named module, importable because pytest prepends this folder)."""

from __future__ import annotations

from typing import Any


def many_models_scenario(n: int, *, base_ms: int = 150, per_token_ms: float = 1.5,
                         tokens: tuple[int, int] = (200, 300)) -> dict[str, Any]:
    """A scenario dict with ``n`` unlimited models on one OpenAI-style provider."""
    return {
        "name": f"many{n}",
        "seed": 7,
        "providers": {
            "openai": {
                "style": "openai",
                "keys": ["sk-sbx-many-models-key-m001"],
                "models": {
                    f"m{i:02d}": {"latency": {"base_ms": base_ms, "per_output_token_ms": per_token_ms, "jitter": 0.2},
                                  "output_tokens": list(tokens)}
                    for i in range(n)
                },
            }
        },
    }
