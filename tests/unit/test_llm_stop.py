"""StopStringMatcher: released text is always a prefix of the final text, which is cut before the first stop."""
import random

from models.llm.stop import StopStringMatcher


def stream(deltas, stops):
    """Feed deltas; return (released text, stopped, every intermediate released prefix)."""
    m = StopStringMatcher(stops)
    out, prefixes = "", []
    for d in deltas:
        text, stopped = m.feed(d)
        out += text
        prefixes.append(out)
        if stopped:
            return out, True, prefixes
    out += m.flush()
    return out, False, prefixes


def test_no_stop_strings_pass_through_unchanged():
    m = StopStringMatcher([])
    assert m.feed("Hello") == ("Hello", False)
    assert m.flush() == ""


def test_cuts_before_stop_string_within_one_delta():
    assert stream(["Hello world. Bye"], ["."]) == ("Hello world", True, ["Hello world"])


def test_stop_string_spanning_deltas_is_held_back_then_cut():
    m = StopStringMatcher(["STOP"])
    assert m.feed("abc ST") == ("abc ", False)  # "ST" may start "STOP": held back
    assert m.feed("O") == ("", False)
    assert m.feed("P and more") == ("", True)  # text ends before the stop string
    assert m.feed("x") == ("", True)  # nothing after a stop


def test_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    m = StopStringMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("ART") == ("START", False)
    assert m.feed("STO") == ("", False)
    assert m.flush() == "STO"  # the sequence ended for another reason: release what was held


def test_earliest_occurrence_wins_among_several_stop_strings():
    assert stream(["xabcd"], ["bcd", "abcx"])[0] == "xa"
    assert stream(["ab", "cd"], ["abc", "bcd"])[0] == ""
    assert stream(["hello"], ["", "lo"])[0] == "hel"  # an empty stop string is ignored


def test_random_chunkings_match_cut_at_first_occurrence():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 20)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 5))))
        deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        expected = text[: min(hits)] if hits else text
        out, stopped, prefixes = stream(deltas, stops)
        assert (out, stopped) == (expected, bool(hits)), (text, stops, deltas)
        assert all(expected.startswith(p) for p in prefixes)  # never released anything it had to take back
