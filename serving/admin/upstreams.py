"""/admin/upstreams: what this ingress knows of each upstream model: its circuit, its last health check."""
from __future__ import annotations

from fastapi import APIRouter, Request

from serving.errors import ModelNotFoundError

router = APIRouter(prefix="/admin/upstreams", tags=["admin"])


def _states(request: Request) -> list[dict]:
    pool = request.app.state.upstreams
    return [] if pool is None else pool.states()


@router.get("")
async def list_upstreams(request: Request) -> dict:
    """Every routed upstream model: base URL, remote model, calls in flight, `circuit` (state closed | open |
    half_open, failures, seconds until it half-opens) and `health` (the last active check). Per ingress replica."""
    return {"object": "list", "data": _states(request)}


@router.get("/{name:path}")
async def get_upstream(name: str, request: Request) -> dict:
    for state in _states(request):
        if state["name"] == name:
            return state
    raise ModelNotFoundError(f"No upstream model `{name}` is routed here.")
