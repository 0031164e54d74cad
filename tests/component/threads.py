"""Running a test's workers in threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_workers(worker: Callable[[int], None], count: int = 8) -> list[BaseException]:
    """Call `worker(0)` ... `worker(count - 1)`, each in its own thread, all at once; returns
    what they raised (a failed assertion in a thread would otherwise pass unnoticed)."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            worker(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
