"""Results: one ModelResult per requested model, successes and failures alike, every attempt kept."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbfanout.core.errors import RETRYABLE, ErrorCategory, ErrorInfo, UsageError
from nbfanout.providers.base import ToolCall

__all__ = ["Attempt", "BatchResult", "FanoutResult", "ModelResult"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request sent (or refused before sending): when, to what, and how it ended."""

    model: str
    key_id: str
    start_s: float  # seconds since the run started
    end_s: float
    outcome: str  # "ok" or an error category value
    status: int | None = None
    message: str = ""
    wait_s: float = 0.0  # how long we waited before the next attempt
    in_flight: int = 0  # requests in flight (whole run) when this one started
    rotated_to: str | None = None


@dataclass(frozen=True, slots=True)
class ModelResult:
    """What one requested model produced: the answer, or exactly why there is none."""

    requested: str
    model: str  # the model that actually answered (or was last tried)
    ok: bool
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    latency_s: float = 0.0
    finish_reason: str | None = None
    attempts: tuple[Attempt, ...] = ()
    error: ErrorInfo | None = None
    prompt_index: int = 0
    cached: bool = False
    dropped_params: tuple[str, ...] = ()  # asked for, but left out: the model refuses them (catalog ``rejects``)
    downscaled: tuple[str, ...] = ()  # images made smaller for this provider's limits, one note each
    saved_cost: float | None = None  # a cached answer costs nothing: what it would have cost
    tool_calls: tuple[ToolCall, ...] = ()  # the tools the model asked to call, in the neutral form
    via: str = "live"  # how it was asked: "live" (one call) or "batch" (the provider's batch API, at its price)

    @property
    def status(self) -> str:
        """"ok", "failed", or "cancelled" (stopped by the user before an answer: not the provider's failure)."""
        if self.ok:
            return "ok"
        return "cancelled" if self.error is not None and self.error.category is ErrorCategory.CANCELLED else "failed"

    @property
    def category(self) -> str | None:
        return None if self.error is None else self.error.category.value

    @property
    def http_status(self) -> int | None:
        return None if self.error is None else self.error.status

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_record(self) -> dict[str, Any]:
        """A flat, JSON-ready dict (design.md's ``--json`` fields)."""
        return {
            "requested": self.requested,
            "model": self.model,
            "status": self.status,
            "text": self.text,
            "error_category": self.category,
            "http_status": self.http_status,
            "provider_message": None if self.error is None else self.error.message,
            "retry_after_s": None if self.error is None else self.error.retry_after_s,
            "attempts": len(self.attempts),
            "latency_s": self.latency_s,  # unrounded: a view that rounds it again must show what the run showed
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "finish_reason": self.finish_reason,
            "prompt_index": self.prompt_index,
            "cached": self.cached,
            "saved_cost": self.saved_cost,
            "dropped_params": list(self.dropped_params),
            "downscaled": list(self.downscaled),
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": dict(c.arguments)} for c in self.tool_calls],
            "via": self.via,
            "attempt_log": [asdict(a) for a in self.attempts],
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ModelResult:
        """The result ``to_record`` wrote (a saved ``results.json``), for ``rerun`` in a later session."""
        error = None
        if rec.get("error_category"):
            category = ErrorCategory(rec["error_category"])
            error = ErrorInfo(category, category in RETRYABLE, rec.get("provider_message") or "",
                              status=rec.get("http_status"), retry_after_s=rec.get("retry_after_s"))
        fields = {f.name for f in dataclasses.fields(Attempt)}
        return cls(
            requested=rec["requested"], model=rec.get("model") or rec["requested"], ok=rec.get("status") == "ok",
            text=rec.get("text") or "", input_tokens=int(rec.get("input_tokens") or 0),
            output_tokens=int(rec.get("output_tokens") or 0), cost=rec.get("cost"),
            latency_s=float(rec.get("latency_s") or 0.0), finish_reason=rec.get("finish_reason"),
            attempts=tuple(Attempt(**{k: v for k, v in a.items() if k in fields}) for a in rec.get("attempt_log") or ()),
            error=error, prompt_index=int(rec.get("prompt_index") or 0), cached=bool(rec.get("cached")),
            dropped_params=tuple(rec.get("dropped_params") or ()), downscaled=tuple(rec.get("downscaled") or ()),
            saved_cost=rec.get("saved_cost"), via=rec.get("via") or "live", tool_calls=tuple(ToolCall(c["id"], c["name"], c.get("arguments") or {}) for c in rec.get("tool_calls") or ()),
        )

    def __repr__(self) -> str:
        what = f"{len(self.text)} chars" if self.ok else f"{self.category}: {self.error.message[:60] if self.error else ''}"
        via = f" via {self.model}" if self.model != self.requested else ""
        return f"<ModelResult {self.requested}{via} {self.status} {what}, {len(self.attempts)} attempt(s), {self.latency_s:.2f}s>"


def _records_to_dataframe(records: list[dict[str, Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("to_dataframe() needs pandas: pip install pandas") from exc
    return pd.DataFrame.from_records(records)


@dataclass(frozen=True)
class FanoutResult:
    """One prompt's answers from every requested model, in the requested order."""

    prompt: str
    results: tuple[ModelResult, ...]
    elapsed_s: float = 0.0
    synthesis: ModelResult | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __iter__(self) -> Iterator[ModelResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: int | str) -> ModelResult:
        if isinstance(key, int):
            return self.results[key]
        for r in self.results:
            if r.requested == key:
                return r
        raise KeyError(f"{key!r} was not requested; requested: {', '.join(r.requested for r in self.results)}")

    @property
    def succeeded(self) -> tuple[ModelResult, ...]:
        return tuple(r for r in self.results if r.ok)

    @property
    def failed(self) -> tuple[ModelResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def total_cost(self) -> float:
        """USD of the answers whose price is known (``unpriced`` names the others; cached ones cost 0)."""
        return sum(r.cost or 0.0 for r in self.results) + ((self.synthesis.cost or 0.0) if self.synthesis else 0.0)

    @property
    def unpriced(self) -> tuple[str, ...]:
        """Models that answered but have no price in the catalog or config: not in ``total_cost``."""
        answered = [*self.results, *((self.synthesis,) if self.synthesis else ())]
        return tuple(dict.fromkeys(r.model for r in answered if r.ok and r.cost is None))

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    def to_records(self) -> list[dict[str, Any]]:
        return [r.to_record() for r in self.results]

    def to_json(self) -> str:
        doc = {
            "prompt": self.prompt,
            "elapsed_s": round(self.elapsed_s, 4),
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
            "total_cost": self.total_cost,
            "unpriced": list(self.unpriced),
            "models": self.to_records(),
            "synthesis": None if self.synthesis is None else self.synthesis.to_record(),
        }
        return json.dumps(doc, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FanoutResult:
        """A result saved by ``to_json`` (or ``save``'s results.json); raises UsageError when it is not one."""
        try:
            doc = json.loads(text)
            results = tuple(ModelResult.from_record(r) for r in doc["models"])
            synthesis = ModelResult.from_record(doc["synthesis"]) if doc.get("synthesis") else None
            return cls(prompt=doc["prompt"], results=results, elapsed_s=float(doc.get("elapsed_s") or 0.0),
                       synthesis=synthesis)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"not a saved nbfanout result (results.json from --out or FanoutResult.save): {exc}") from exc

    def to_dataframe(self) -> Any:
        return _records_to_dataframe(self.to_records())

    def save(self, directory: str | Path) -> Path:
        """Write one markdown file per answer and ``results.json``; returns the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for r in self.results:
            if r.ok:
                (out / (r.requested.replace("/", "__").replace(":", "_") + ".md")).write_text(r.text, encoding="utf-8")
        if self.synthesis is not None and self.synthesis.ok:
            (out / "synthesis.md").write_text(self.synthesis.text, encoding="utf-8")
        (out / "results.json").write_text(self.to_json(), encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        from nbfanout.render import result_html  # lazy: the core never imports UI code

        return result_html(self)

    def __repr__(self) -> str:
        return (
            f"<FanoutResult {len(self.succeeded)}/{len(self.results)} ok in {self.elapsed_s:.2f}s, "
            f"{self.total_tokens} tokens, ${self.total_cost:.4f}>"
        )


@dataclass(frozen=True, slots=True)
class Score:
    """A judge's verdict on one answer."""

    score: float | None
    rationale: str = ""
    judge: str = ""
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class BatchResult:
    """prompts × models; ``rows[i]`` is prompt i's FanoutResult, in input order."""

    prompts: tuple[str, ...]
    models: tuple[str, ...]
    rows: tuple[FanoutResult, ...]
    elapsed_s: float = 0.0
    scores: dict[tuple[int, str], Score] = field(default_factory=dict, compare=False)

    def __iter__(self) -> Iterator[FanoutResult]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> FanoutResult:
        return self.rows[index]

    @property
    def results(self) -> Sequence[ModelResult]:
        return [r for row in self.rows for r in row.results]

    @property
    def total_cost(self) -> float:
        """USD over every answer whose price is known (``unpriced`` names the others)."""
        return sum(row.total_cost for row in self.rows)

    @property
    def cost_by_model(self) -> dict[str, float]:
        """USD per answering model, over the answers whose price is known."""
        out: dict[str, float] = {}
        for r in self.results:
            if r.cost is not None:
                out[r.model] = out.get(r.model, 0.0) + r.cost
        return out

    @property
    def unpriced(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for row in self.rows for m in row.unpriced))

    def to_records(self) -> list[dict[str, Any]]:
        out = []
        for i, row in enumerate(self.rows):
            for r in row.results:
                rec = r.to_record()
                rec["prompt"] = self.prompts[i]
                score = self.scores.get((i, r.requested))
                rec["score"] = None if score is None else score.score
                out.append(rec)
        return out

    def to_dataframe(self) -> Any:
        return _records_to_dataframe(self.to_records())

    def _repr_html_(self) -> str:
        from nbfanout.render import batch_html  # lazy: the core never imports UI code

        return batch_html(self)

    def __repr__(self) -> str:
        ok = sum(1 for r in self.results if r.ok)
        return f"<BatchResult {len(self.prompts)} prompts × {len(self.models)} models: {ok}/{len(self.results)} ok in {self.elapsed_s:.2f}s>"
