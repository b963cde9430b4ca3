"""A lean load client (aiohttp: on 2 cores it leaves the server most of the CPU) for streaming chat against the
fake LLM, which answers a message by echoing it: so each stream can be checked whole and in order."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import aiohttp

REFUSED = "refused"


@dataclass
class LoadResult:
    """What the clients saw: complete streams, clean refusals (429 + Retry-After before the first byte), and every
    other outcome described, by HTTP status where there was one."""

    completed: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


async def refusal_problem(response: aiohttp.ClientResponse) -> str | None:
    """None for a clean 429 (Retry-After, an OpenAI rate-limit error body), else what is wrong with it."""
    body = await response.json(content_type=None)
    if not response.headers.get("Retry-After", "").isdigit():
        return f"429 without Retry-After: {dict(response.headers)}"
    if body.get("error", {}).get("type") != "rate_limit_error":
        return f"429 without an OpenAI rate-limit body: {body}"
    return None


async def stream_problem(response: aiohttp.ClientResponse, expected: str) -> str | None:
    """None when the SSE stream carries exactly `expected` in order, finishes with "stop" and ends in [DONE]."""
    text, finish, done = [], None, False
    async for raw in response.content:
        line = raw.strip()
        if not line:
            continue
        if done:
            return f"data after [DONE]: {line[:200]!r}"
        payload = line.removeprefix(b"data: ")
        if payload == b"[DONE]":
            done = True
            continue
        event = json.loads(payload)
        if "error" in event:
            return f"error event: {event['error']}"
        for choice in event["choices"]:
            text.append(choice["delta"].get("content") or "")
            finish = choice.get("finish_reason") or finish
    if "".join(text) != expected or finish != "stop" or not done:
        return f"stream incomplete or out of order: {''.join(text)!r} for {expected!r}, {finish}, done={done}"
    return None


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, text: str, result: LoadResult) -> float:
    """One streaming chat request, recorded in `result`; returns the seconds the server asked to wait (0 if none)."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True, "temperature": 0}
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            result.count(response.status)
            if response.status == 429:
                problem = await refusal_problem(response)
                result.refused += problem is None
                wait = float(response.headers.get("Retry-After") or 0)
            elif response.status == 200:
                problem, wait = await stream_problem(response, text), 0.0
                result.completed += problem is None
            else:
                problem, wait = f"status {response.status}: {(await response.text())[:300]}", 0.0
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        problem, wait = f"{type(e).__name__}: {e}", 0.0
    if problem is not None:
        result.failures.append(problem)
    return wait


async def streaming_clients(url: str, model: str, clients: int, seconds: float, timeout_s: float) -> LoadResult:
    """`clients` concurrent clients, each sending one streaming request after another for `seconds`; a refused
    client waits what Retry-After says (at most 1 s) before its next request."""
    result = LoadResult()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        k = 0
        while loop.time() < end:
            wait = await one_stream(session, url, model, f"client {i} request {k}", result)
            k += 1
            if wait:
                await asyncio.sleep(min(wait, 1.0))  # a client's think time, as Retry-After asks

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    return result
