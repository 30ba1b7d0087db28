"""Nothing needs the network: convert, register and chat inside a namespace with no network.

``unshare -n`` gives the child a network namespace whose only interface (loopback) is
down, so any connection fails; an audit hook also records every Python-level connect
attempt, so a silently swallowed failure still fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import socket, sys
attempts = []
def hook(event, args):
    if event == "socket.connect" and args[0].family != socket.AF_UNIX:
        attempts.append(args[1])
sys.addaudithook(hook)

from pathlib import Path
from tests.models import make_tiny_model
from slmops.toolkit.stages.convert import ConvertSpec, Precision, convert
from slmops.toolkit.stages.register import register
from slmops.toolkit.runtimes.foundry import LoadedModel

work = Path(sys.argv[1])
model = make_tiny_model(work / "hf")
out = convert(ConvertSpec(model, work / "int4", Precision.INT4), progress=False).output_dir
register(out, "offline-int4")
with LoadedModel("offline-int4") as loaded:
    text = "".join(p for p in loaded.chat("hello", max_tokens=4, temperature=0) if isinstance(p, str))
print("CHAT-OK", len(text))
print("CONNECT-ATTEMPTS", attempts)
'''


def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root or user namespaces)")
def test_convert_register_chat_without_network(tmp_path: Path) -> None:
    env = {**os.environ, "SLMOPS_CACHE_DIR": str(tmp_path / "cache"), "SLMOPS_HOME": str(tmp_path / "home")}
    probe = subprocess.run(["unshare", "-n", sys.executable, "-c",
                            "import socket; s = socket.socket(); s.settimeout(2); print(s.connect_ex(('1.1.1.1', 80)))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() != "0"  # the namespace really has no network
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CHAT-OK" in done.stdout
    assert "CONNECT-ATTEMPTS []" in done.stdout, done.stdout
