"""One piece of work on a thread of its own, its result or error collected where it is needed."""

from __future__ import annotations

import threading
from typing import Callable, Generic, Optional, TypeVar, cast

T = TypeVar("T")


class Background(Generic[T]):
    """`work()` on a daemon thread, started at once. `result` waits for it (Ctrl-C still
    arrives) and returns its value or raises its error there; `failed` is called on the thread
    with an error as soon as it happens."""

    def __init__(
        self,
        work: Callable[[], T],
        name: Optional[str] = None,
        failed: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        self.value: Optional[T] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(
            target=self._run, args=(work, failed), name=name, daemon=True
        )
        self.thread.start()

    def _run(self, work: Callable[[], T], failed: Callable[[BaseException], None]) -> None:
        try:
            self.value = work()
        except BaseException as exc:  # handed to whoever asks for the result
            self.error = exc
            failed(exc)

    def result(self) -> T:
        """Its value once done; its error raised here."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return cast(T, self.value)  # work() returned: this is its value, None included
