"""What a caller may pass as a prompt and as tools, turned into the neutral forms every wire takes.

A prompt is a string, or a conversation: a list of ``Message`` objects or dicts shaped like
``{"role": "user" | "assistant" | "tool" | "system", "content": ..., "tool_calls": [...],
"tool_call_id": ..., "name": ...}``. A tool is a ``Tool`` or a dict with ``name``,
``description`` and ``parameters`` (a JSON Schema object); OpenAI's ``{"type": "function",
"function": {...}}`` shape is accepted too. Anything else is a ``UsageError`` that names it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nbfanout.core.errors import UsageError
from nbfanout.providers.base import Message, Tool, ToolCall

__all__ = ["as_conversation", "as_tools", "check_text"]

# OpenAI and Gemini both require function names of at most 64 letters, digits, "_" or "-"
# (https://platform.openai.com/docs/api-reference/chat/create, tools.function.name).
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ROLES = ("user", "assistant", "tool", "system")


_UNSENDABLE = re.compile("[\ud800-\udfff\x00]")


def check_options(*, max_tokens: Any = None, temperature: Any = None, timeout: Any = None) -> None:
    """Refuse request options no provider takes as meant, before anything is sent (None: the default)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if max_tokens is not None and not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1):
        raise UsageError(f"max_tokens must be a whole number of at least 1, got {max_tokens!r}; leave it out for the "
                         "model's default")
    if temperature is not None and not (number(temperature) and 0 <= temperature <= 2):
        raise UsageError(f"temperature must be a number from 0 to 2, got {temperature!r} (Anthropic takes 0 to 1)")
    if timeout is not None and not (number(timeout) and timeout > 0):
        raise UsageError(f"timeout must be a number of seconds above 0, got {timeout!r}; leave it out for "
                         "[defaults] timeout_s")


def check_text(text: str, what: str) -> None:
    """Refuse text no provider can be sent, before anything is: a lone surrogate cannot be encoded as
    UTF-8 (JSON bodies are UTF-8), and a NUL character is refused or silently cut by providers."""
    if not isinstance(text, str):
        raise UsageError(f"{what} must be text (a str), got {type(text).__name__} {text!r:.40}")
    bad = _UNSENDABLE.search(text)
    if bad is None:
        return
    at, ch = bad.start(), bad.group()
    if ch == "\x00":
        raise UsageError(f"{what} holds a NUL character at character {at}; remove it (text.replace('\\x00', ''))")
    raise UsageError(f"{what} holds a lone surrogate ({ch!r}) at character {at}, which cannot be sent as UTF-8; "
                     "it usually comes from bytes decoded with errors='surrogateescape': fix the text, e.g. "
                     "text.encode('utf-8', 'replace').decode('utf-8')")


def as_conversation(prompt: str | Sequence[Message | Mapping[str, Any]], system: str | None
                    ) -> tuple[str, tuple[Message, ...], str | None]:
    """(the prompt's text, the conversation or () for a plain prompt, the system prompt).

    The text is the last user message's: what results, caches and views show as "the prompt".
    A "system" message in the list becomes the system prompt unless ``system`` is given too.
    """
    if isinstance(prompt, str):
        return prompt, (), system
    if not isinstance(prompt, Sequence) or not prompt:
        raise UsageError(f"prompt must be a string or a non-empty list of messages, not {type(prompt).__name__}")
    messages: list[Message] = []
    for i, item in enumerate(prompt):
        m = item if isinstance(item, Message) else _message(item, i)
        if m.role == "system":
            if system is not None:
                raise UsageError(f"messages[{i}] is a system message, and system= is given too: keep one")
            system = m.content
            continue
        messages.append(m)
    if not messages:
        raise UsageError("the conversation has only a system message: add the user's turn")
    asked = {c.id for m in messages for c in m.tool_calls}
    for i, m in enumerate(messages):
        if m.role == "tool" and m.tool_call_id not in asked:
            raise UsageError(f"a tool result answers call {m.tool_call_id!r}, which no assistant message made")
    users = [m.content for m in messages if m.role == "user"]
    return (users[-1] if users else messages[-1].content), tuple(messages), system


def _message(item: Any, i: int) -> Message:
    if not isinstance(item, Mapping):
        raise UsageError(f"messages[{i}]: expected a Message or a dict with role and content, not {type(item).__name__}")
    role = item.get("role")
    if role not in _ROLES:
        raise UsageError(f"messages[{i}].role: expected one of {', '.join(_ROLES)}, not {role!r}")
    content = item.get("content") or ""
    if not isinstance(content, str):
        raise UsageError(f"messages[{i}].content: expected text, not {type(content).__name__}")
    calls = tuple(_call(c, i, j) for j, c in enumerate(item.get("tool_calls") or ()))
    if role == "tool" and not item.get("tool_call_id"):
        raise UsageError(f"messages[{i}]: a tool result needs the tool_call_id of the call it answers")
    return Message(role, content, tool_calls=calls, tool_call_id=item.get("tool_call_id"), name=item.get("name"))


def _call(c: Any, i: int, j: int) -> ToolCall:
    if isinstance(c, ToolCall):
        return c
    if not (isinstance(c, Mapping) and c.get("id") and c.get("name") and isinstance(c.get("arguments", {}), Mapping)):
        raise UsageError(f"messages[{i}].tool_calls[{j}]: expected a ToolCall or a dict with id, name and arguments")
    return ToolCall(str(c["id"]), str(c["name"]), dict(c.get("arguments") or {}))


def as_tools(tools: Sequence[Tool | Mapping[str, Any]] | None) -> tuple[Tool, ...]:
    """Tools in the neutral form, each name and schema checked."""
    out: list[Tool] = []
    for i, t in enumerate(tools or ()):
        if isinstance(t, Mapping) and t.get("type") == "function" and isinstance(t.get("function"), Mapping):
            t = t["function"]  # OpenAI's shape, unwrapped
        if isinstance(t, Mapping):
            t = Tool(str(t.get("name") or ""), str(t.get("description") or ""),
                     t.get("parameters") or {"type": "object", "properties": {}})
        if not isinstance(t, Tool):
            raise UsageError(f"tools[{i}]: expected a Tool or a dict with name, description and parameters")
        if not _NAME.match(t.name):
            raise UsageError(f"tools[{i}].name {t.name!r}: use 1 to 64 letters, digits, '_' or '-'")
        if not (isinstance(t.parameters, Mapping) and t.parameters.get("type") == "object"):
            raise UsageError(f"tools[{i}].parameters: expected a JSON Schema object ({{\"type\": \"object\", ...}})")
        out.append(t)
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise UsageError(f"two tools are named {next(n for n in names if names.count(n) > 1)!r}")
    return tuple(out)
