"""Fallbacks in the router: which errors fall back, in which order, and what a caller gets when none can answer."""
import pytest

from models.errors import EngineOverloadedError
from serving.clients import EmbeddingResult, GenerationChunk, GenerationRequest, ModelCard
from serving.errors import CircuitOpenError, InvalidRequestError, ModelUnavailableError, ServerOverloadedError
from serving.router import ModelRouter, ServedModel
from models.llm.types import SamplingParams


class Chat:
    """Answers with its own name, or fails before (or after) the first chunk."""

    def __init__(self, name: str, error: Exception | None = None, after_first: bool = False):
        self.name, self.error, self.after_first, self.calls = name, error, after_first, 0

    async def generate(self, request):
        self.calls += 1
        if self.error is not None and not self.after_first:
            raise self.error
        yield GenerationChunk(0, self.name, [], None, None, 1, 1)
        if self.error is not None:
            raise self.error
        yield GenerationChunk(0, "!", [], None, "stop", 1, 2)


class Embed:
    def __init__(self, dims: int, error: Exception | None = None):
        self.dims, self.error = dims, error

    async def embed(self, inputs):
        if self.error is not None:
            raise self.error
        import numpy as np
        return EmbeddingResult(np.zeros((len(inputs), self.dims), np.float32), 1)


def served(name: str, task: str, client, fallbacks=()) -> ServedModel:
    return ServedModel(ModelCard(name, task, 0), client, (), tuple(fallbacks))


REQUEST = GenerationRequest("r", SamplingParams(), messages=[{"role": "user", "content": "hi"}])


async def text(client) -> str:
    return "".join([c.text async for c in client.generate(REQUEST)])


@pytest.mark.parametrize("error", [CircuitOpenError("open", retry_after=3), ModelUnavailableError("restarting"),
                                   ServerOverloadedError("queue full"), EngineOverloadedError("full")])
async def test_unavailable_or_overloaded_falls_back_in_order_skipping_what_cannot_answer(error):
    primary, second, third = Chat("a", error), Chat("b", ModelUnavailableError("b down")), Chat("c")
    router = ModelRouter([
        served("a", "chat", primary, ["missing", "embedder", "b", "c"]), served("b", "chat", second),
        served("c", "chat", third), served("embedder", "embedding", Embed(4)),
    ])
    assert await text(router.client("a", "chat")) == "c!"
    assert (primary.calls, second.calls, third.calls) == (1, 1, 1)


async def test_other_errors_and_errors_after_the_first_chunk_do_not_fall_back():
    bad_input = Chat("a", InvalidRequestError("bad"))
    router = ModelRouter([served("a", "chat", bad_input, ["b"]), served("b", "chat", Chat("b"))])
    with pytest.raises(InvalidRequestError):
        await text(router.client("a", "chat"))
    late = Chat("a", ModelUnavailableError("died mid-stream"), after_first=True)
    router = ModelRouter([served("a", "chat", late, ["b"]), served("b", "chat", Chat("b"))])
    with pytest.raises(ModelUnavailableError):
        await text(router.client("a", "chat"))  # half an answer was already on its way: no second one


async def test_when_no_fallback_answers_the_caller_gets_the_models_own_error():
    own = CircuitOpenError("a's circuit is open", retry_after=9)
    router = ModelRouter([served("a", "chat", Chat("a", own), ["b"]),
                          served("b", "chat", Chat("b", ServerOverloadedError("b full")))])
    with pytest.raises(CircuitOpenError) as raised:
        await text(router.client("a", "chat"))
    assert raised.value is own and raised.value.headers() == {"Retry-After": "9"}


async def test_fallbacks_are_not_transitive_and_apply_to_every_task():
    router = ModelRouter([
        served("a", "chat", Chat("a", ModelUnavailableError("x")), ["b"]),
        served("b", "chat", Chat("b", ModelUnavailableError("y")), ["c"]),
        served("c", "chat", Chat("c")),
        served("e", "embedding", Embed(4, ServerOverloadedError("full")), ["f"]),
        served("f", "embedding", Embed(6)),
    ])
    with pytest.raises(ModelUnavailableError, match="x"):
        await text(router.client("a", "chat"))  # b's own fallback (c) is not a's
    assert (await router.client("e", "embedding").embed(["q"])).vectors.shape == (1, 6)
