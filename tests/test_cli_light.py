"""The everyday commands (tokens, accounts, keys) open the store without the model libraries:
they answer in a fraction of a second instead of loading torch, SpeechBrain and Whisper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("torch", "ctranslate2", "speechbrain", "faster_whisper", "onnxruntime", "pjsua2",
         "ivr.service")
SCRIPT = """
import contextlib, io, json, sys
import ivr.cli
loaded_by_import = [m for m in {heavy!r} if m in sys.modules]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    codes = [ivr.cli.main(["token", "create", "--role", "admin", "--name", "ops"]),
             ivr.cli.main(["token", "list"]),
             ivr.cli.main(["account", "add", "--id", "acct-1", "--phone", "13800210000"]),
             ivr.cli.main(["keys", "status"])]
print(json.dumps({{"codes": codes, "import": loaded_by_import,
                  "run": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def test_everyday_commands_load_no_model_library(tmp_path: Path) -> None:
    env = {**os.environ, "IVR_DATA_DIR": str(tmp_path / "var"),
           "IVR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0], "import": [], "run": []}, result
