"""Pure torch / transformers / diffusers backends. Never imports ray, fastapi, starlette or pydantic."""
