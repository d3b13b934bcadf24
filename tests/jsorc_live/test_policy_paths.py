"""`jsorc actionpolicy set path/to/file.py:Class`: a file is allowed only when it is one of the
server's `--policy-file`s (exactly as a module must be allowed); a refusal is a 403 naming
the file, decided before the file is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.jsorc_live.servers import REPO, jsorc_serving

TOKEN = "policy-paths-token"

POLICY = '''
from pathlib import Path

from policies import Decision, NoParams

Path(__file__).with_suffix(".imported").write_text("ran")


class Keep:
    """Keeps every placement."""

    Params = NoParams

    def __init__(self, params=None):
        self.params = NoParams()

    def reset(self, seed):
        pass

    def decide(self, observation):
        return Decision.keep("keep")
'''


def _set(url: str, ref: str) -> httpx.Response:
    return httpx.post(url + "/jsorc/actionpolicy/set",
                      json={"policy_name": ref, "policy_params": {}},
                      headers={"Authorization": f"token {TOKEN}"}, timeout=30)


def test_a_policy_file_path_is_allowed_only_when_the_server_was_given_it(
        tmp_path: Path) -> None:
    served, other = tmp_path / "served_policies.py", tmp_path / "other_policies.py"
    served.write_text(POLICY)
    other.write_text(POLICY)
    with jsorc_serving(TOKEN, "--policy-file", str(served)) as url:
        refused = _set(url, f"{other}:Keep")
        assert refused.status_code == 403, refused.text
        message = refused.json()["message"]
        assert f"policy file '{other}' is not allowed" in message, message
        assert f"--policy-file {other}" in message and str(served) in message, message
        assert not other.with_suffix(".imported").exists(), "refused before importing"

        accepted = _set(url, f"{served}:Keep")
        assert accepted.status_code == 200, accepted.text
        got = httpx.post(url + "/jsorc/actionpolicy/get", json={},
                         headers={"Authorization": f"token {TOKEN}"}, timeout=30).json()
        assert f"{served}:Keep" in str(got), got

        # The client makes a relative path absolute from its own folder.
        client = subprocess.run(
            [sys.executable, "-m", "jsorc_live.cli", "actionpolicy", "set",
             f"{served.name}:Keep", "--server", url, "--token", TOKEN],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert client.returncode == 0, client.stderr + client.stdout
        refused_cli = subprocess.run(
            [sys.executable, "-m", "jsorc_live.cli", "actionpolicy", "set",
             f"{other.name}:Keep", "--server", url, "--token", TOKEN],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert refused_cli.returncode == 2, refused_cli.stderr + refused_cli.stdout
        assert f"policy file '{other}' is not allowed" in refused_cli.stderr + refused_cli.stdout
