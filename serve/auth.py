"""API keys: who may use the server's /v1 endpoints.

Keys come from `--api-key-file` (one per line; blank lines and `#` comments ignored) and from the
CHATPIPE_API_KEYS environment variable (comma-separated); with none configured, auth is off. Clients
send `Authorization: Bearer <key>`. A presented key is hashed and compared with every configured key's
hash by hmac.compare_digest, so the time taken says nothing about how close a guess was or which key it
resembled. Keys are never logged or echoed back.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from chatpipe.serve.errors import APIError
from chatpipe.tasks.common.errors import InputError

ENV_VAR = "CHATPIPE_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Keys:
    def __init__(self, keys: Iterable[str]):
        self._digests = tuple({_digest(k) for k in keys})

    @classmethod
    def configured(cls, key_file: Path | None, env: Mapping[str, str] = os.environ) -> Keys:
        """The keys in `key_file` (if given; it must hold at least one) and in $CHATPIPE_API_KEYS."""
        keys = [k.strip() for k in env.get(ENV_VAR, "").split(",") if k.strip()]
        if key_file is not None:
            try:
                lines = Path(key_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or e
                raise InputError(f"--api-key-file {key_file}: cannot read it ({reason})") from None
            from_file = [s for line in lines if (s := line.strip()) and not s.startswith("#")]
            if not from_file:
                raise InputError(f"--api-key-file {key_file}: holds no key (one per line)")
            keys += from_file
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless auth is off or the `Authorization` header carries a configured key."""
        if not self.enabled:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "missing API key: send the header `Authorization: Bearer <key>`",
                           code="invalid_api_key")
        presented = _digest(key.strip())
        matched = False
        for digest in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise APIError(401, "incorrect API key", code="invalid_api_key")
