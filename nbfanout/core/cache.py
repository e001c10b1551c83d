"""An opt-in response cache (sqlite): an identical request to the same model returns without a call."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from nbfanout.core.headers import RateSnapshot
from nbfanout.providers.base import ChatRequest, ChatResponse, ToolCall, Usage

log = logging.getLogger(__name__)

__all__ = ["ResponseCache"]


def _default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "nbfanout" / "responses.sqlite"


class ResponseCache:
    """Maps (model, request) to a stored answer. Keys are never part of the request hash."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # several kernels may share one cache: WAL lets readers go on while one writes, and a
        # writer waits up to the timeout for another's lock instead of failing
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        for _ in range(100):  # switching to WAL takes an exclusive lock that the busy timeout does not wait for
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:  # another process holds it, and is likely switching it too
                time.sleep(0.01)
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, request: ChatRequest) -> str:
        doc = {
            "model": model,
            "system": request.system,
            "messages": [
                {"role": m.role, "content": m.content,
                 "images": [hashlib.sha256(i.data or (i.url or "").encode()).hexdigest() for i in m.images],
                 "tool_calls": [asdict(c) for c in m.tool_calls], "tool_call_id": m.tool_call_id, "name": m.name}
                for m in request.messages
            ],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "extra": request.extra,
            "tools": [asdict(t) for t in request.tools],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, model: str, request: ChatRequest) -> ChatResponse | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT body FROM responses WHERE key = ?", (self.key(model, request),)).fetchone()
        except sqlite3.OperationalError as exc:  # locked past the timeout, or the disk is gone: ask the provider
            log.warning("response cache %s unreadable (%s); asking the provider", self.path, exc)
            row = None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        doc = json.loads(row[0])
        calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in doc.get("tool_calls", []))
        return ChatResponse(text=doc["text"], usage=Usage(**doc["usage"]), finish_reason=doc["finish_reason"],
                            model=doc["model"], status=200, rate=RateSnapshot(), tool_calls=calls)

    def put(self, model: str, request: ChatRequest, response: ChatResponse) -> None:
        body = json.dumps({"text": response.text, "usage": asdict(response.usage),
                           "finish_reason": response.finish_reason, "model": response.model,
                           "tool_calls": [asdict(c) for c in response.tool_calls]})
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO responses (key, body) VALUES (?, ?)",
                                 (self.key(model, request), body))
                self._db.commit()
        except sqlite3.OperationalError as exc:  # the answer is returned all the same; only its copy is lost
            log.warning("response cache %s not written (%s)", self.path, exc)

    def __repr__(self) -> str:
        return f"<ResponseCache {self.path} hits={self.hits} misses={self.misses}>"
