"""Judging: a model scores each answer 0-10; verdicts are parsed from JSON or plain text."""

from __future__ import annotations

import json
import re

__all__ = ["JUDGE_TRIES", "judge_prompt", "parse_score"]

JUDGE_TRIES = 3  # an empty or unparsable verdict is asked again, this many times in all


def judge_prompt(question: str, answer: str) -> str:
    """What the judge model is asked for one answer."""
    return (
        "You are grading an answer. Reply with JSON only: {\"score\": <number 0-10>, \"reason\": \"<one sentence>\"}.\n\n"
        f"## Question\n{question}\n\n## Answer\n{answer}"
    )


def parse_score(text: str) -> tuple[float, str] | None:
    """A judge's score from JSON (``{"score": 7}``) or a plain "score: 7" / "7/10"; None if absent."""
    text = (text or "").strip()
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            doc = json.loads(match.group(0))
            if isinstance(doc, dict) and isinstance(doc.get("score"), (int, float)):
                return float(doc["score"]), str(doc.get("reason", ""))
        except ValueError:
            pass
    m = re.search(r"score\W{0,3}(\d+(?:\.\d+)?)|\b(\d+(?:\.\d+)?)\s*/\s*10\b", text, re.I)
    if m:
        return float(m.group(1) or m.group(2)), text
    return None
