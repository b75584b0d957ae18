"""A trainer process ends without interpreter finalization (process_exit.py) but keeps what
finalization does that code relies on: its exit code, its non-daemon threads' work, the
atexit handlers (logging's among them) and whatever stdout still buffers."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], timeout=120,
        capture_output=True, text=True,
    )  # fmt: skip


def test_threads_atexit_handlers_and_buffered_output_come_before_the_exit() -> None:
    done = _run(
        """
        import atexit, logging, sys, threading
        from concurrent.futures import ThreadPoolExecutor
        from spotrun_trainer.process_exit import exit_process
        # An idle executor's worker (non-daemon) ends only through threading's exit hook.
        pool = ThreadPoolExecutor(1)
        pool.submit(print, "pool ran").result()
        logging.basicConfig(stream=sys.stderr, format="%(message)s", level=logging.INFO)
        atexit.register(lambda: print("atexit ran", flush=True))
        def late():
            # Still running when the exit begins: it ends once the main thread has stopped,
            # which threading's shutdown marks before it joins the others.
            threading.main_thread().join(timeout=60)
            print("thread finished")
        threading.Thread(target=late).start()
        sys.stdout.write("buffered, no newline")
        logging.getLogger("x").info("logged")
        exit_process(143)
        """
    )
    assert done.returncode == 143, done.stderr[-2000:]
    assert "thread finished" in done.stdout and "atexit ran" in done.stdout, done.stdout
    assert "pool ran" in done.stdout, done.stdout
    assert "buffered, no newline" in done.stdout, done.stdout
    assert "logged" in done.stderr, done.stderr


def test_not_orderly_leaves_a_blocked_thread_and_the_atexit_handlers_behind() -> None:
    done = _run(
        """
        import atexit, threading
        from spotrun_trainer.process_exit import exit_process
        atexit.register(lambda: print("atexit ran", flush=True))
        threading.Thread(target=threading.Event().wait).start()
        print("before", flush=True)
        exit_process(86, orderly=False)
        """
    )
    assert done.returncode == 86, done.stderr[-2000:]
    assert done.stdout == "before\n", done.stdout


def test_run_main_ends_as_main_ended() -> None:
    """0 when main returns; a SystemExit's code after the script's own finally blocks ran;
    a message for a string code, as sys.exit prints it, and 1."""
    script = """
        import sys
        from spotrun_trainer.process_exit import run_main
        def main():
            try:
                if sys.argv[1] == "stop":
                    raise SystemExit(143)
                if sys.argv[1] == "message":
                    sys.exit("bad config")
            finally:
                print("finally ran", flush=True)
        run_main(main)
        """
    runs = {arg: _run(script, arg) for arg in ("return", "stop", "message")}
    assert {a: r.returncode for a, r in runs.items()} == {"return": 0, "stop": 143, "message": 1}
    assert all(r.stdout == "finally ran\n" for r in runs.values()), runs
    assert runs["message"].stderr == "bad config\n", runs["message"].stderr
