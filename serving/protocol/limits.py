"""Every cap on a request value, in one place (docs/limits.md lists them with their errors), and the types that
apply them. Character caps apply at parsing, before any tokenizer sees the text."""
from __future__ import annotations

from typing import Annotated, Any, Callable, Iterable

from pydantic import Field, StringConstraints, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

# Sampling (chat and completions). Temperature, top_p and the penalties keep OpenAI's ranges, in SamplingFields.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # int64, as vLLM; torch takes [-2^63, 2^64), so seed + choice stays valid
MAX_CHOICES = 16  # n; more choices per request would let one caller monopolise the engine
MAX_TOKENS = 2**31 - 1  # max_tokens beyond any context; what does not fit the model's context is the engine's 400
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_STOP_CHARS = 256  # per stop string; each is searched in the text after every token
MAX_STOP_TOKEN_IDS = 64
MAX_TOKEN_ID = 2**31 - 1  # token ids (prompts, stop_token_ids, embeddings input); the model checks its vocabulary
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API
MAX_TOP_K = 2**31 - 1
MAX_BEST_OF = MAX_CHOICES  # refused unless equal to n, which has its own cap
MAX_MODALITIES = 8
MAX_LOGPROB_ENTRIES = 2**18  # n x (top_logprobs + 1) x max_tokens: ~13 MB of JSON in one response

# Text in, per request (chat messages together, completion prompts together, embedding inputs together).
MAX_TEXT_CHARS = 2**20  # characters (or token ids); OpenAI's per-message cap was 1,048,576 characters too
# An LLM prompt longer than this many characters per token of the model's context cannot fit it (SmolLM2's longest
# token has 81 characters; text averages 3-5): refused before the tokenizer spends seconds on it.
MAX_CHARS_PER_TOKEN = 32
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256  # text parts of one message
MAX_PROMPTS = 64  # completions: prompts per request; each becomes its own engine request
MAX_SEQUENCES = 128  # completions: prompts x n, the engine requests one call may start
MAX_EMBEDDING_INPUTS = 2048  # as OpenAI
MAX_EMBEDDING_DIMENSIONS = 65536

# Images and speech.
MAX_IMAGES = 10  # as OpenAI
MAX_IMAGE_STEPS = 200
MAX_IMAGE_PROMPT_CHARS = 4000  # as OpenAI's dall-e-3; negative_prompt too
MAX_IMAGE_SIDE = 16384  # pixels; the model's own max_pixels is the real bound
MAX_GUIDANCE_SCALE = 50.0
MAX_SPEECH_CHARS = 4096  # as OpenAI; instructions too
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # as OpenAI

# Short strings: model ids, user, names, voices, enum-like values.
MAX_NAME_CHARS = 256

# Error codes (OpenAI's names) that the error map gives to pydantic's error types and to the checks below.
STRING_TOO_LONG = "string_above_max_length"
ARRAY_TOO_LONG = "array_above_max_length"
INVALID_TEXT = "invalid_unicode"
ERROR_CODES = {"string_too_long": STRING_TOO_LONG, "too_long": ARRAY_TOO_LONG, "string_unicode": INVALID_TEXT,
               STRING_TOO_LONG: STRING_TOO_LONG, ARRAY_TOO_LONG: ARRAY_TOO_LONG}


def text(max_chars: int, min_chars: int = 0) -> Any:
    """A string type of at most `max_chars` characters. Constrained strings are also checked to be valid Unicode:
    JSON can carry lone surrogates ("\\ud800") that no UTF-8 encoder, tokenizer or JSON response accepts."""
    return Annotated[str, StringConstraints(min_length=min_chars, max_length=max_chars)]


def bounded_list(item: Any, max_items: int, min_items: int = 0) -> Any:
    return Annotated[list[item], Field(min_length=min_items, max_length=max_items)]


Name = text(MAX_NAME_CHARS)
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]  # a prompt as token ids
Prompt = text(MAX_TEXT_CHARS)  # the per-request totals below bound several of them together
StopString = text(MAX_STOP_CHARS)


def too_long(what: str, size: int, limit: int, unit: str = "characters") -> PydanticCustomError:
    """The error of a total over several values (a 400 with code string_above_max_length)."""
    return PydanticCustomError(STRING_TOO_LONG, "{what} is too long: {size} {unit}, at most {limit} are allowed",
                               {"what": what, "size": size, "unit": unit, "limit": limit})


def too_many(what: str, size: int, limit: int) -> PydanticCustomError:
    """The error of a count over several lists (a 400 with code array_above_max_length)."""
    return PydanticCustomError(ARRAY_TOO_LONG, "too many {what}: {size}, at most {limit} are allowed",
                               {"what": what, "size": size, "limit": limit})


def text_or_tokens(field: str, max_items: int) -> Any:
    """A text-or-token-ids input (completions' prompt, embeddings' input): one string, 1..max_items strings, token
    ids, or 1..max_items token-id lists; no string or list empty, every one within its caps. check_total bounds
    their sum."""
    item = text(MAX_TEXT_CHARS, min_chars=1)
    return Annotated[
        item | bounded_list(item, max_items, 1) | TokenIds | bounded_list(TokenIds, max_items, 1),
        one_message(f"{field} must be a string, a list of strings, a list of token ids or a list of token-id lists"),
    ]


def as_list(value: str | list) -> list:
    """A text-or-token-ids input as a batch: a string or a token-id list is one item, any other list holds items."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


def check_total(items: Iterable[str | list[int]], what: str) -> None:
    """At most MAX_TEXT_CHARS characters (text) or token ids (lists) in `items` together."""
    items = list(items)
    size = sum(len(item) for item in items)
    if size > MAX_TEXT_CHARS:
        unit = "token ids" if items and isinstance(items[0], list) else "characters"
        raise too_long(what, size, MAX_TEXT_CHARS, unit)


def one_message(message: str) -> WrapValidator:
    """Replace pydantic's one-error-per-union-branch output by one readable message, unless a branch of the right
    type failed on one of the caps above: that error says more and keeps its code."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            for error in exc.errors():
                if error["type"] in _SAYS_MORE:
                    raise PydanticCustomError(error["type"], _located(error)) from None
            raise ValueError(message) from exc

    return WrapValidator(validate)


_SAYS_MORE = {*ERROR_CODES, "greater_than_equal", "less_than_equal", "string_too_short", "too_short"}  # errors of a union branch of the right type


def _located(error: dict) -> str:
    """"item [3]: Input should be ..." for an error inside a list, so that the caller sees which item."""
    where = "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
    return f"item {where}: {error['msg']}" if where else error["msg"]
