"""Pydantic request/response models mirroring the OpenAI API, one module per endpoint; requests convert themselves
into engine/backend parameters."""
