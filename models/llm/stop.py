"""Stop strings for streamed text: release what is safe, hold back what may start a stop string, cut before it.

Invariant: released text never contains a stop string and never ends inside the start of one that later text
could complete. So the text seen by the client is exactly `full_text[:first_stop_index]` (no stop string), or the
whole text when none ever appears (after `flush()`).
"""
from __future__ import annotations


class StopStringMatcher:
    """Feed text deltas in; get back the part that may be released now, and whether a stop string was hit."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]  # an empty stop string would match everywhere: ignore it
        self._pending = ""  # unreleased text: a suffix that is a proper prefix of some stop string
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add `delta`; return (text to release now, True if a stop string was found). Nothing after a stop."""
        if self.stopped:
            return "", True
        if not self.stops:
            return delta, False
        buf = self._pending + delta
        cut = _first_stop_index(buf, self.stops)
        if cut is not None:
            self._pending = ""
            self.stopped = True
            return buf[:cut], True
        hold = _longest_partial_suffix(buf, self.stops)
        self._pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """The request ended without a stop string: release the held-back text."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out


def _first_stop_index(text: str, stops: list[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _longest_partial_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string (0 if none)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
