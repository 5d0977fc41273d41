"""The console script ends with os._exit after doing the exit work Python's teardown would do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
import adcore.cli as cli

folder = Path(sys.argv[1])

def late_writer():
    time.sleep(0.3)  # still running when main returns: the exit must wait for it
    (folder / "thread.txt").write_text("done")

def main():
    threading.Thread(target=late_writer).start()
    atexit.register(lambda: (folder / "atexit.txt").write_text("ran"))
    sys.stdout.write("buffered line\\n")  # a pipe is block-buffered: lost unless flushed
    return {code}

cli.main = main
cli.console_main()
print("not reached")
"""


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", body, str(tmp_path)], capture_output=True, text=True, timeout=120)


def test_console_main_waits_for_threads_runs_atexit_flushes_and_keeps_the_exit_code(tmp_path):
    done = _run(tmp_path, _SCRIPT.format(code=3))
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered line\n"  # flushed, and nothing after console_main ran
    assert (tmp_path / "thread.txt").read_text() == "done"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_a_bug_still_ends_with_its_traceback(tmp_path):
    body = _SCRIPT.format(code=0).replace("    return 0", "    raise RuntimeError('a bug')")
    done = _run(tmp_path, body)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: a bug" in done.stderr
    assert (tmp_path / "atexit.txt").read_text() == "ran"  # the usual teardown ran its handlers


def test_python_dash_m_adcore_goes_through_the_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "adcore", "list"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "padim" in done.stdout  # the whole listing arrived through the pipe before os._exit
