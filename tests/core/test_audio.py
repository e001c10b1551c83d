"""core/audio.py: the audio length that transcriptions are charged in Groq's audio seconds."""

from __future__ import annotations

import io
import wave

import pytest

from nbfanout.core.audio import ASSUMED_BYTES_PER_S, audio_seconds


def test_a_wav_headers_frames_and_rate_give_its_length():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(b"\x00" * 4 * 22050 * 3)
    assert audio_seconds(buf.getvalue()) == (pytest.approx(3.0), True)


def test_a_flac_streaminfo_gives_its_length():
    rate, samples = 16000, 16000 * 7 + 8000
    packed = (rate << 44) | (0 << 41) | (15 << 36) | samples  # mono, 16 bits per sample
    streaminfo = b"\x10\x00\x10\x00" + b"\x00" * 6 + packed.to_bytes(8, "big") + b"\x00" * 16
    data = b"fLaC" + b"\x80\x00\x00\x22" + streaminfo + b"\xff\xf8" * 100
    assert audio_seconds(data) == (pytest.approx(7.5), True)


def test_other_formats_and_broken_headers_are_estimated_from_their_size():
    assert audio_seconds(b"ID3" + b"\x00" * 47_997) == (pytest.approx(48_000 / ASSUMED_BYTES_PER_S), False)
    assert audio_seconds(b"RIFF\x00\x00\x00\x00WAVEjunk")[1] is False
