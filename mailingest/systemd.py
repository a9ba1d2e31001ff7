"""sd_notify without a dependency: READY=1, STOPPING=1, WATCHDOG=1 and STATUS= over the socket
systemd names in NOTIFY_SOCKET (a no-op when not run by systemd)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd recommends, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def start_watchdog(alive: threading.Event, healthy: Callable[[], bool]) -> threading.Thread | None:
    """Ping the watchdog while ``healthy()`` says the worker loops are alive."""
    interval = watchdog_interval()
    if interval is None:
        return None

    def ping() -> None:
        while not alive.wait(interval):
            if healthy():
                notify("WATCHDOG=1")

    thread = threading.Thread(target=ping, name="watchdog", daemon=True)
    thread.start()
    return thread
