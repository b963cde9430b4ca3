"""Secrets reach the ingress and the registry controller through a file, never as deployment arguments.

Serve stores deployment arguments inside Ray (its controller checkpoints them in the GCS), where whoever reaches
Ray could read them. So `openserve up` writes the server section's secrets (API keys, admin keys, the registry URL,
which may hold a database password) to a file in the data dir that only its user can read (mode 0600), and the
deployments get the section without them plus the file's path.
"""
from __future__ import annotations

import json
import os

from serving.config import ServerConfig

SECRET_FIELDS = frozenset({"api_keys", "admin_api_keys", "registry_url"})
SECRETS_FILE = "secrets.json"


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` readable by this user only (0600 from the first byte; replaced atomically)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_secrets(server: ServerConfig) -> tuple[dict, str]:
    """(the server section without its secrets, the path of the 0600 file in the data dir that holds them)."""
    path = os.path.join(server.resolved_data_dir, SECRETS_FILE)
    write_private(path, json.dumps(server.model_dump(include=set(SECRET_FIELDS))))
    return server.model_dump(exclude=set(SECRET_FIELDS)), path


def read_server(settings: dict, secrets_path: str) -> ServerConfig:
    """The whole server section again, in a deployment: `settings` plus the secrets read from their file."""
    with open(secrets_path) as f:
        secrets = json.load(f)
    return ServerConfig.model_validate({**settings, **secrets})


def remove_secrets(server: ServerConfig) -> None:
    """Delete the secrets file (on shutdown: nothing needs it any more)."""
    try:
        os.unlink(os.path.join(server.resolved_data_dir, SECRETS_FILE))
    except FileNotFoundError:
        pass
