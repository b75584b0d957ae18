"""systemd-logind's shutdown protocol on a real node, so the real kubelet's graceful node
shutdown manager runs end to end.

Real nodes have no systemd. The kubelet's shutdown manager (kubernetes
pkg/kubelet/nodeshutdown/systemd/inhibit_linux.go) needs from logind exactly this, on the
node's system bus: the ``InhibitDelayMaxUSec`` property, ``Manager.Inhibit`` returning a
delay-lock file descriptor, and the ``PrepareForShutdown(true)`` signal. On SIGUSR1 this
process does what logind does when the machine is asked to power off (as EC2 does at the
end of a spot notice with graceful shutdown, or GCE for a preemption): it emits
``PrepareForShutdown(true)``, waits until every delay lock is released or the inhibit delay
has passed, and then writes ``poweroff`` in its folder; the harness then kills the instance.

Run inside the node's namespaces: ``python -m spotrun_dev.fake_logind --dir D --delay S``.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures ("t", "h",
# "b") from the annotations themselves.
import argparse
import asyncio
import os
import signal
import time
from pathlib import Path

from dbus_fast import BusType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_property, method
from dbus_fast.service import signal as dbus_signal

BUS_NAME = "org.freedesktop.login1"
OBJECT_PATH = "/org/freedesktop/login1"


class Manager(ServiceInterface):
    """The part of org.freedesktop.login1.Manager the kubelet uses."""

    def __init__(self, delay_seconds: float) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.delay_usec = int(delay_seconds * 1_000_000)
        self.locks: list[int] = []  # our ends of the delay locks handed out

    @dbus_property(access=PropertyAccess.READ)
    def InhibitDelayMaxUSec(self) -> "t":  # type: ignore[name-defined]  # noqa: F821
        return self.delay_usec

    @method()
    def Inhibit(self, what: "s", who: "s", why: "s", mode: "s") -> "h":  # type: ignore[name-defined]  # noqa: F821
        # A pipe: the caller holds the write end; when it closes it (or dies), our read end
        # sees EOF and the lock is released, as with logind's FIFO.
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        self.locks.append(read_end)
        # Our copy of the write end must go once the reply (which carries a duplicate of
        # it) is sent, or the lock could never be released.
        asyncio.get_running_loop().call_later(2.0, os.close, write_end)
        return write_end

    @dbus_signal()
    def PrepareForShutdown(self, start: bool) -> "b":  # type: ignore[name-defined]  # noqa: F821
        return start

    def locks_released(self) -> bool:
        still = []
        for fd in self.locks:
            try:
                data = os.read(fd, 1)
            except BlockingIOError:
                still.append(fd)
                continue
            if data:
                still.append(fd)
            else:
                os.close(fd)
        self.locks = still
        return not still


async def _shutdown(manager: Manager, folder: Path) -> None:
    manager.PrepareForShutdown(True)
    (folder / "prepare-for-shutdown").write_text(f"{time.time()}\n")
    deadline = time.monotonic() + manager.delay_usec / 1_000_000
    while time.monotonic() < deadline and not manager.locks_released():
        await asyncio.sleep(0.2)
    (folder / "poweroff").write_text(f"{time.time()}\n")


async def serve(folder: Path, delay_seconds: float) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    manager = Manager(delay_seconds)
    bus.export(OBJECT_PATH, manager)
    await bus.request_name(BUS_NAME)
    (folder / "ready").write_text(f"{os.getpid()}\n")
    requested = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, requested.set)
    await requested.wait()
    await _shutdown(manager, folder)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="where ready/poweroff are written")
    p.add_argument("--delay", type=float, default=45.0, help="InhibitDelayMaxSec")
    args = p.parse_args()
    asyncio.run(serve(args.dir, args.delay))


if __name__ == "__main__":
    main()
