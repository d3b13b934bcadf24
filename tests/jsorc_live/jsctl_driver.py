"""Drive Jaseci's real `jsctl` (its click commands, as `jsctl script` does) from JSON lines.

Run with Jaseci's own Python (.jaseci-venv): importing jsctl takes seconds (Jaseci starts its
services and retries Redis), so one process serves a whole test. Each stdin line is a JSON
list, jsctl's argv after `jsctl -f SESSION`; each answer is one JSON line
`{"exit_code", "stdout", "stderr", "exception"}`. The first line out is `{"ready": true}`.
The session file (argv[1]) is jsctl's own: `jsctl -f SESSION login ...` from the console
script writes it just the same.
"""

import json
import sys

from click.testing import CliRunner
from jaseci.cli_tools import jsctl

session = sys.argv[1]
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    argv = json.loads(line)
    result = CliRunner(mix_stderr=False).invoke(jsctl.jsctl, ["-f", session, *argv])
    print(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout,
                      "stderr": result.stderr,
                      "exception": repr(result.exception) if result.exception else None}),
          flush=True)
