"""``python -m spotrun_lm [--config run.yaml] [--section.field VALUE ...]``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from spotrun_lm.config import ConfigError, load_config
from spotrun_trainer import startup_gc  # torch-free, and needed before anything heavy

# The module launcher mode runs in each torchrun worker: this program.
ENTRY_MODULE = "spotrun_lm"


def main(argv: Sequence[str] | None = None) -> int:
    # Before the imports below: a restarted rank's seconds go to them (startup_gc.py). The
    # trainer turns the collector back on once its model is built; any other way out of
    # main (a config error, the launcher, an exception) does it here.
    startup_gc.pause()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        startup_gc.resume()


def _main(args: list[str]) -> int:
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"spotrun_lm: {e}", file=sys.stderr)
        return 2
    from spotrun_trainer import launcher

    # nproc_per_node defaults to SPOTRUN_PROCS_PER_NODE (spec.procsPerNode) in a pod.
    if cfg.nproc_per_node > 1 and not launcher.is_worker(os.environ):
        startup_gc.resume()  # the launcher supervises for the whole run: it imports nothing
        logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(message)s")
        grace = cfg.preemption.grace_period_seconds
        return launcher.launch(args, cfg.nproc_per_node, grace, module=ENTRY_MODULE)

    # Rank 0 picks the checkpoint to load and verifies it, every byte, while the other
    # ranks wait: start that now, beside the imports below (checkpoint_verify.py).
    if os.environ.get("RANK", "0") == "0":
        from spotrun_trainer.checkpoint_verify import verify_ahead

        verify_ahead(cfg.checkpoint.dir)

    from spotrun_lm.train import run
    from spotrun_trainer.shard_writer import WriterOptions, set_zip_crc32

    # Every file of a checkpoint gets a sha256 in its manifest as it is written, so
    # torch.save's per-record CRC32 would be a second checksum of the same bytes (and
    # torch.load does not check it). The switch is process-wide, so it is set here, at the
    # entry point of a process that is spotrun's, never by a library object in a process
    # it shares with a user's code (DCP's checkpoint process sets its own).
    set_zip_crc32(WriterOptions().crc32)
    try:
        code = run(cfg)
    except Exception:
        # An application error: the traceback goes to stderr and the process exits 1;
        # under the launcher, leave that code for it too.
        launcher.record_exit(1)
        raise
    launcher.record_exit(code)
    return code


def exit_code_now(code: int) -> NoReturn:
    """End this process with ``code`` without interpreter finalization (process_exit.py:
    seconds of CPU while the next gang waits for this pod), and without waiting for its
    threads when the process group's teardown was left blocked (distributed.shutdown)."""
    from spotrun_trainer.process_exit import exit_process

    # sys.modules: a launcher (nproc > 1) never imported torch, and need not now.
    dist_module = sys.modules.get("spotrun_trainer.distributed")
    blocked = dist_module is not None and dist_module.TEARDOWN_BLOCKED.is_set()
    exit_process(code, orderly=not blocked)


if __name__ == "__main__":
    exit_code_now(main())
