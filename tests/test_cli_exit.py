"""The `dpl` executable ends its process itself once a command is done (`study.cli.command`): what it wrote
must still reach a pipe in full, exit handlers and non-daemon threads must still run to their end, and the
command's exit code must be the process's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

#: `dpl plan --preset smoke --json` as the executable runs it, leaving behind (as MLflow or a user's plugin
#: might) an exit handler, a slow non-daemon thread and unflushed output, all after the command's own work.
SCRIPT = """
import atexit, sys, threading, time
from study import cli
def late():
    time.sleep(1.0)
    print("thread finished", file=sys.stderr)
def main_then_leftovers(argv=None):
    code = real_main(argv)
    atexit.register(lambda: print("exit handler ran", file=sys.stderr))
    threading.Thread(target=late).start()
    print("unflushed tail", end="")  # stdout is a pipe: block-buffered
    return code
real_main, cli.main = cli.main, main_then_leftovers
sys.argv = ["dpl", *sys.argv[1:]]
cli.command()
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_output_handlers_threads_and_exit_code_survive_the_quick_exit(tmp_path) -> None:
    ok = run("plan", "--preset", "smoke", "--storage", str(tmp_path / "s"), "--json", "--no-compute")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.endswith("unflushed tail")
    plan = json.loads(ok.stdout.removesuffix("unflushed tail"))
    assert len(plan["trials"]) == 8
    assert ok.stderr.splitlines()[-2:] == ["thread finished", "exit handler ran"]

    bad = run("plan", "--preset", "smoke", "--storage", str(tmp_path / "s"), "--set", "colour=1")
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-2000:])  # a user error: one line, exit code 2
    error, *rest = bad.stderr.splitlines()
    assert error.startswith("dpl: error: study spec: colour: unknown key") and rest == ["thread finished",
                                                                                        "exit handler ran"]
