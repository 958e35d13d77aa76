"""The shared test audio: real speech (`jfk.flac`) and two interview dialogues with their ground truth.

The files live outside the repository, in `../shared/data` beside the checkout (see README); callers fail
loudly when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """`$SHARED_DATA_DIR` if set, else `../shared/data` beside the checkout (the documented place), else the
    workspace copy at /work/shared/data (a CI clone may live elsewhere)."""
    env = os.environ.get("SHARED_DATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    if beside.is_dir():
        return beside
    workspace = Path("/work/shared/data")
    return workspace if workspace.is_dir() else beside


SHARED_DATA = shared_data_dir()

JFK_AUDIO = SHARED_DATA / "jfk.flac"
# what is said in jfk.flac (11 s, the clip the Whisper test suites use; ground truth from ../shared/data/README.md)
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."

# The shared dialogues: `<name>.wav` (48 kHz mono mix), `<name>.stereo.wav` (interviewer left, candidate
# right), `<name>.snr10.wav` (with noise) and `<name>.json` (turns: speaker, text, start_s, end_s).
SHARED_DIALOGUES = ("mobile_mixed", "security_positive")
