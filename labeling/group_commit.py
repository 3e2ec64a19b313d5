"""Group commit: writes that arrive while one batch is being written go together in the next one.

Twenty annotators voting in the same second would otherwise queue for the writer lock one by
one, each paying BEGIN, its checks and a COMMIT (about 3 ms under the GIL, and longer while the
decode loop runs). Here the first caller becomes the leader and writes every request waiting at
that moment in one transaction; the callers that arrive meanwhile wait and go in the next batch,
led by one of them. Nobody waits for a timer: a lone vote is written at once, as before.

A batch may return a slow second step (the journal's fsync) that runs after the next leader has
been let in, so the next batch's transaction overlaps this batch's fsync; the batch's callers
return only once that step is done too.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class _Slot:
    __slots__ = ("request", "result", "error", "taken", "done")

    def __init__(self, request):
        self.request, self.result, self.error = request, None, None
        self.taken = self.done = False  # in a batch being written / its outcome is known


class GroupCommit(Generic[Request, Result]):
    """`submit(request)` returns its own result once the batch that carried it was written.

    `write_batch(requests)` returns (outcomes, then): one outcome per request, in order, the result
    or an exception raised to that request's caller alone; and `then`, None or a callable run once
    the next batch may start. An exception raised by `write_batch` or by `then` fails the whole
    batch and is raised to every caller in it."""

    def __init__(self, write_batch: Callable[[list[Request]],
                                             tuple[list[Result | BaseException], Callable[[], None] | None]]):
        self._write_batch = write_batch
        self._changed = threading.Condition()
        self._pending: list[_Slot] = []
        self._leading = False  # a batch is being written

    def submit(self, request: Request) -> Result:
        slot = _Slot(request)
        with self._changed:
            self._pending.append(slot)
            while (slot.taken or self._leading) and not slot.done:
                self._changed.wait()  # a batch is being written, or this one's batch is finishing
            lead = not slot.taken
            if lead:  # no batch running and this one not taken yet: lead the next
                self._leading = True
                batch, self._pending = self._pending, []
                for taken in batch:
                    taken.taken = True
        if lead:
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _lead(self, batch: list[_Slot]) -> None:
        then = None
        try:
            outcomes, then = self._write_batch([s.request for s in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"write_batch returned {len(outcomes)} outcomes for {len(batch)} requests")
        except BaseException as exc:  # every caller of the batch learns it failed, none waits forever
            outcomes = [exc] * len(batch)
        finally:
            with self._changed:  # let the next leader in; this batch's callers keep waiting for `then`
                self._leading = False
                self._changed.notify_all()
        if then is not None:
            try:
                then()
            except BaseException as exc:
                outcomes = [exc] * len(batch)
        with self._changed:
            for slot, outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    slot.error = outcome
                else:
                    slot.result = outcome
                slot.done = True
            self._changed.notify_all()
