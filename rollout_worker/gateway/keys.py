"""Client keys of the gateway (`art-serve --api-key KEY`, `--api-keys-file FILE`).

A key given on the command line may use every task; a keys file maps each key to the tasks it
may use, `*` for all, and is read again when it changes (rotate keys without a restart):

    {"sk-team-a": ["letters", "gsm8k"], "sk-admin": "*"}        (JSON, or the same in YAML)

A request carries its key as OpenAI clients send it, `Authorization: Bearer <key>`. Keys are
compared in constant time (every known key's digest against the given one's, no early exit),
never logged, and never forwarded to the engine. A keys file that is deleted revokes its keys;
one that does not parse keeps the previous ones (a warning says why) (the engine's own key is the gateway's
`backend_headers`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError

logger = logging.getLogger("art-serve")
ALL = "*"


@dataclass(frozen=True)
class Access:
    """What one key may use: every task and the served model (`everything`), or the tasks
    named."""

    everything: bool
    tasks: frozenset[str] = frozenset()

    def allows(self, task: str) -> bool:
        return self.everything or task in self.tasks


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys_file(path: Path) -> dict[str, Access]:
    """key -> Access from a JSON or YAML mapping; a one-line error for anything else."""
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # only for a YAML keys file: an optional format

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # the file's own syntax error, whichever parser
        raise UserError(f"--api-keys-file {path}: cannot be parsed ({err})") from err
    if not isinstance(data, dict):
        raise UserError(f'--api-keys-file {path}: give a mapping {{key: [tasks] or "*"}}')
    out = {}
    for key, tasks in data.items():
        if not isinstance(key, str) or not key:
            raise UserError(f"--api-keys-file {path}: every key must be a non-empty string")
        if tasks == ALL:
            out[key] = Access(True)
        elif isinstance(tasks, list) and all(isinstance(t, str) for t in tasks):
            out[key] = Access(ALL in tasks, frozenset(tasks))
        else:
            raise UserError(
                f'--api-keys-file {path}: the tasks of a key must be a list of names or "*"'
            )
    return out


class KeyRing:
    """The keys a gateway accepts: the command line's (every task) and a keys file's (read
    again when its modification time or size changes; a file that turns bad keeps the last
    good keys and logs why)."""

    def __init__(self, keys: tuple[str, ...] = (), keys_file: str | None = None):
        self.fixed = {_digest(k): Access(True) for k in keys if k}
        self.path = Path(keys_file).expanduser() if keys_file else None
        self.from_file: dict[bytes, Access] = {}
        self.stamp: bytes | None = None  # the file's sha256: an edit of the same size is seen
        if self.path is not None:
            if not self.path.is_file():
                raise UserError(f"--api-keys-file {self.path} does not exist")
            self._reload(strict=True)

    @property
    def enabled(self) -> bool:
        return bool(self.fixed) or self.path is not None

    def _reload(self, strict: bool = False) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as err:  # deleted: its keys are revoked (fail closed)
            if strict:
                raise UserError(f"--api-keys-file {self.path} does not exist") from err
            if self.from_file:
                logger.warning("art-serve: %s is gone: its keys are revoked", self.path)
            self.from_file, self.stamp = {}, None
            return
        except OSError as err:
            if strict:
                raise UserError(f"--api-keys-file {self.path}: {err}") from err
            return
        stamp = hashlib.sha256(data).digest()
        if stamp == self.stamp:
            return
        try:
            keys = parse_keys_file(self.path)
        except UserError as err:
            if strict:
                raise
            logger.warning("art-serve: keeping the previous keys: %s", err)
            self.stamp = stamp  # said once per version of the file
            return
        self.from_file = {_digest(k): a for k, a in keys.items()}
        self.stamp = stamp
        logger.info("art-serve: %d key(s) from %s", len(keys), self.path)

    def check(self, authorization: str | None) -> Access | None:
        """The access of the key in an `Authorization: Bearer <key>` header, or None."""
        if self.path is not None:
            self._reload()
        scheme, _, given = (authorization or "").partition(" ")
        digest = _digest(given.strip() if scheme.lower() == "bearer" else "")
        found = None
        for known, access in [*self.fixed.items(), *self.from_file.items()]:
            if hmac.compare_digest(known, digest):  # every key compared: no early exit
                found = access
        return found
