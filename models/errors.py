"""Errors raised by backends; the serving layer maps them to HTTP once."""


class ModelInputError(ValueError):
    """The caller's input cannot be processed by this model (maps to HTTP 400).

    `param` names the request field at fault when known (e.g. "max_tokens", "input").
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class EngineOverloadedError(RuntimeError):
    """The model's queue is full; the request was not accepted (maps to HTTP 429)."""


class DeviceUnavailableError(RuntimeError):
    """A model asks for a device this process cannot use (a GPU without usable CUDA); its deploy fails with this."""


class FastPathError(RuntimeError):
    """The fast path cannot run (batched runner probe, CUDA graph capture) and the model's options make that an
    error (`strict: true`) rather than a logged fallback."""
