"""UpstreamTransport: HTTP to one remote OpenAI-compatible server, with pooled connections, connect and read
timeouts, retries (jittered backoff) of calls that failed before any byte of a response, and a circuit breaker
that hears the outcome of every call. Every failure leaves here as a typed ServingError."""
from __future__ import annotations

import asyncio
import json
import random
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp

from serving.errors import (
    CircuitOpenError, DeadlineExceededError, InvalidRequestError, ModelUnavailableError, ServerOverloadedError,
    ServingError, UpstreamError,
)
from serving.upstream.breaker import OPEN, CircuitBreaker, Permit
from serving.upstream.config import UpstreamConfig

# Failures before any byte of a response: the remote has not answered, so the call may be sent again. A read
# timeout is not among them: the remote may be working on the request, and a retry would double the wait.
_RETRIED = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
            aiohttp.ConnectionTimeoutError)
_UPSTREAM_FAULTS = (UpstreamError, ModelUnavailableError, DeadlineExceededError)  # the remote's fault: a failure
MAX_ERROR_BYTES = 64 * 1024  # what is read of a failed response's body (its error message)
MAX_BODY_BYTES = 256 * 2**20  # a reply larger than this is refused, not buffered (ten 1024x1024 PNGs: ~40 MB)


class UpstreamTransport:
    def __init__(self, name: str, config: UpstreamConfig, api_key: str | None, breaker: CircuitBreaker,
                 problem: str | None = None, uniform: Callable[[float, float], float] = random.uniform,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.name = name  # the model's name, for messages
        self.config = config
        self.breaker = breaker
        self.problem = problem  # a configuration that cannot work (its key's variable unset): every call says so
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._uniform = uniform
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the event loop that uses it
        self.in_flight = 0

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            c = self.config
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=c.max_connections, limit_per_host=c.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=c.connect_timeout_s, sock_read=c.read_timeout_s),
                # Bodies are ours to decode (json.loads of the bytes): no charset sniffing per response.
                auto_decompress=True, trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @asynccontextmanager
    async def request(self, method: str, path: str, body: Any = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """A 2xx response whose body the caller reads inside the block; the breaker hears how the call ended.

        Raises CircuitOpenError (503) while the circuit is open, ModelUnavailableError (503) when the remote cannot
        be reached, DeadlineExceededError (504) when it is silent for read_timeout_s, UpstreamError (502) for its
        5xx, a refused key or a cut response, ServerOverloadedError (429) for its 429, InvalidRequestError (400)
        for its other 4xx."""
        if self.problem:
            raise UpstreamError(f"`{self.name}` cannot call its upstream: {self.problem}", code="upstream_config")
        permit = self.breaker.acquire()
        self.in_flight += 1
        verdict = False
        try:
            response = await self._send(method, path, body)
            completed = False
            try:
                await self._check_status(response)
                yield response
                completed = True
            finally:
                # A reply left unread (the caller left mid-stream, or failed) closes its connection: the remote
                # sees the hang-up and can stop generating; a finished one goes back to the pool.
                if completed:
                    response.release()
                else:
                    response.close()
            verdict = True
            self.breaker.success(permit)
        except ServingError as e:
            verdict = True
            self._judge(permit, e)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:  # while the caller read the body
            verdict = True
            error = self._body_error(e)
            self.breaker.failure(permit, _detail(error, e))
            raise error from e
        finally:
            self.in_flight -= 1
            if not verdict:  # the caller left (cancelled, closed the stream): nothing learnt about the remote
                self.breaker.release(permit)

    async def health_check(self) -> tuple[bool, str]:
        """GET <base_url>/models outside the breaker's permits: (answered 2xx, why not)."""
        timeout = aiohttp.ClientTimeout(total=self.config.connect_timeout_s + 5.0)  # a probe, not a generation
        try:
            async with self.session().get(self.config.base_url + "/models", timeout=timeout) as response:
                if response.status < 300:
                    await response.read()
                    return True, ""
                return False, f"GET /models answered {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return False, f"GET /models failed: {_describe(e)}"

    async def _send(self, method: str, path: str, body: Any) -> aiohttp.ClientResponse:
        """Send until response headers arrive, retrying failures before them (while the circuit stays closed)."""
        data = None if body is None else json.dumps(body).encode()
        headers = None if body is None else {"Content-Type": "application/json"}
        url = self.config.base_url + path
        for attempt in range(self.config.retries + 1):
            try:
                return await self.session().request(method, url, data=data, headers=headers)
            except _RETRIED as e:
                if attempt == self.config.retries:
                    raise ModelUnavailableError(f"the upstream of `{self.name}` cannot be reached") from e
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise self._body_error(e) from e
            if self.breaker.state == OPEN:  # other calls opened it meanwhile: do not keep knocking
                raise CircuitOpenError(f"the upstream of `{self.name}` is failing", retry_after=self.breaker.retry_after())
            await self._sleep(self._uniform(0.0, self.config.retry_backoff_s * 2 ** (attempt + 1)))
        raise AssertionError("unreachable")

    async def _check_status(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 300:
            return
        """Raise the typed error for a remote's error status. Only a 4xx that is the caller's (a bad input) passes the
        remote's own message on; the others say what happened, and the remote's words go to the breaker's
        last_failure (in /admin), not to callers."""
        message, param, code = _error_detail(await read_body(response, MAX_ERROR_BYTES, truncate=True))
        status, where = response.status, f"the upstream of `{self.name}`"
        retry_after = _retry_after(response.headers.get("Retry-After"))
        said = RemoteReply(f"{status}: {message}")
        if status == 429:
            raise ServerOverloadedError(f"{where} is overloaded", retry_after=retry_after) from said
        if status == 503:
            raise ModelUnavailableError(f"{where} is unavailable", retry_after=retry_after) from said
        if status in (401, 403):
            raise UpstreamError(f"{where} refused the API key ({status})", code="upstream_auth") from said
        if status == 404:
            raise UpstreamError(f"{where} answered 404 (is upstream.model right?)", code="upstream_not_found") from said
        if 400 <= status < 500:
            raise InvalidRequestError(message, param=param, code=code)
        raise UpstreamError(f"{where} answered {status}", code="upstream_error") from said

    def _judge(self, permit: Permit, error: ServingError) -> None:
        if isinstance(error, CircuitOpenError):
            self.breaker.release(permit)
        elif isinstance(error, _UPSTREAM_FAULTS):
            self.breaker.failure(permit, _detail(error, error.__cause__))
        else:  # a 4xx or 429: the remote is up and answering
            self.breaker.success(permit)

    def _body_error(self, error: BaseException) -> ServingError:
        """The typed error for a failure once the remote had answered (or was silent too long)."""
        where = f"the upstream of `{self.name}`"
        if isinstance(error, asyncio.TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
            return DeadlineExceededError(f"{where} sent nothing for {self.config.read_timeout_s:g} s "
                                         "(upstream.read_timeout_s)")
        if isinstance(error, ValueError):
            return UpstreamError(f"{where} sent a malformed reply", code="upstream_error")
        return UpstreamError(f"{where}'s reply was cut off", code="upstream_error")


class RemoteReply(Exception):
    """What the remote said with an error status: the cause of the typed error, kept for the breaker's record."""


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_BODY_BYTES, truncate: bool = False) -> bytes:
    """The body, at most `limit` bytes: more is an UpstreamError, or cut off with `truncate`."""
    chunks, size = [], 0
    while chunk := await response.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                return b"".join(chunks)[:limit]
            raise UpstreamError(f"the upstream's reply is larger than {limit} bytes", code="upstream_error")
    return b"".join(chunks)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _detail(error: BaseException, cause: BaseException | None) -> str:
    """The breaker's record of a failure: the typed error and what caused it (the remote's words, the socket's)."""
    return str(error) if cause is None else f"{error}: {_describe(cause)}"


def _error_detail(raw: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) from an OpenAI (or Ollama) error body, else its text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:1000] or "(no body)", None, None
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        code = error.get("code")
        return str(error.get("message", error)), error.get("param"), None if code is None else str(code)
    return str(error), None, None


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:  # an HTTP date: use the typed error's default
        return None
