"""Fixtures for the notebook layer: isolated learned-limit state, a recording comm, scenario builders."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import comm
import pytest
from comm.base_comm import BaseComm


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits learned from the sandbox must not land in the user's real state file (kernels inherit this too)."""
    monkeypatch.setenv("NBFANOUT_STATE", str(tmp_path_factory.mktemp("state") / "learned_limits.json"))


class RecordingComm(BaseComm):
    """A comm that keeps every message the kernel side would send: (monotonic time, msg_type, data, thread name)."""

    sent: list[tuple[float, str, dict[str, Any], str]] = []

    def publish_msg(self, msg_type: str, data: dict[str, Any] | None = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        RecordingComm.sent.append((time.monotonic(), msg_type, data or {}, threading.current_thread().name))


@pytest.fixture
def recording_comm() -> Iterator[list[tuple[float, str, dict[str, Any], str]]]:
    """Route ipywidgets' comms to RecordingComm (``comm.create_comm`` is meant to be replaced) and yield the log."""
    original = comm.create_comm
    RecordingComm.sent = []
    comm.create_comm = lambda *args, **kwargs: RecordingComm(*args, **kwargs)
    try:
        yield RecordingComm.sent
    finally:
        comm.create_comm = original
