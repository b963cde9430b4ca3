"""SharedLookup: the registry controller's watchers share one serve.status() look, and a deploy is never hidden."""
import threading

from serving.deployments.serve_ops import SharedLookup


class CountingFetch:
    """Returns 1, 2, 3, ... per call; while `gate` is set, a call waits on `release` (bounded) first."""

    def __init__(self):
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.gate = False

    def __call__(self) -> int:
        self.calls += 1
        if self.gate:
            self.entered.set()
            assert self.release.wait(10)
        return self.calls


def test_a_young_value_is_shared_and_clear_forces_a_new_fetch():
    fetch = CountingFetch()
    lookup = SharedLookup(fetch, max_age_s=3600)
    assert [lookup.get(), lookup.get()] == [1, 1]
    lookup.clear()
    assert lookup.get() == 2
    assert fetch.calls == 2


def test_an_old_value_is_fetched_again():
    fetch = CountingFetch()
    lookup = SharedLookup(fetch, max_age_s=-1)  # always too old
    assert [lookup.get(), lookup.get()] == [1, 2]


def test_callers_during_a_fetch_wait_for_it_instead_of_fetching_again():
    fetch = CountingFetch()
    fetch.gate = True
    lookup = SharedLookup(fetch, max_age_s=3600)
    got = []
    first = threading.Thread(target=lambda: got.append(lookup.get()))
    first.start()
    assert fetch.entered.wait(10)
    others = [threading.Thread(target=lambda: got.append(lookup.get())) for _ in range(3)]
    for t in others:
        t.start()
    fetch.release.set()
    for t in [first, *others]:
        t.join(10)
    assert got == [1, 1, 1, 1] and fetch.calls == 1


def test_a_clear_during_a_fetch_makes_the_next_caller_fetch_anew():
    """A deploy that lands while an older look is in flight: whoever looks after the deploy sees a new look."""
    fetch = CountingFetch()
    fetch.gate = True
    lookup = SharedLookup(fetch, max_age_s=3600)
    first = threading.Thread(target=lookup.get)
    first.start()
    assert fetch.entered.wait(10)
    clearing = threading.Thread(target=lookup.clear)  # blocks until the in-flight fetch ends
    clearing.start()
    fetch.release.set()
    first.join(10)
    clearing.join(10)
    assert lookup.get() == 2
