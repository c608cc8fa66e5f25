"""Pseudonymous patient keys and the salt they are made with.

PatientID (or the labels CSV ``patient_id`` for PNG/JPEG) is replaced by
``patient_key`` = first 16 hex digits of sha256(salt + id). The salt is
``$FIBROSIS_SALT`` if set, else a random salt created once in ``<cache>/salt.key``.
Keep that file (or the variable) private: with the salt, keys can be matched back
to known IDs; without it they cannot. ``<cache>/salt.check`` records a fingerprint of
the salt (HMAC, reveals nothing of it) on the first run; a later run whose salt
differs is refused, since one patient would otherwise get two keys in one cache.
Ingest and score both call :func:`identity`, so scores join to the training manifest.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections import Counter
from pathlib import Path

from fibrosis import artefacts
from fibrosis.data.records import ImageMeta, PatientId
from fibrosis.io import atomic_write_bytes, read_text

logger = logging.getLogger(__name__)


SALT_ENV = "FIBROSIS_SALT"


class SaltMismatchError(ValueError):
    """The salt now in effect is not the one this cache's patient keys were made with."""


def salt_fingerprint(salt: str) -> str:
    """HMAC of a fixed message under the salt: equal salts match, the salt stays secret."""
    return hmac.new(salt.encode("utf-8"), b"fibrosis-salt-check", hashlib.sha256).hexdigest()[:16]


def resolve_salt(cache_dir: str | Path, *, record: bool = False) -> str:
    """``$FIBROSIS_SALT``, else ``<cache_dir>/salt.key`` (created once, 32 random bytes, mode 600).

    When ``<cache_dir>/salt.check`` exists the salt must match its fingerprint
    (:class:`SaltMismatchError` otherwise, before any salt file is created);
    ``record`` writes it when absent (ingest does, on a cache's first run).
    """
    root = Path(cache_dir)
    env = os.environ.get(SALT_ENV, "")
    path, check = root / artefacts.SALT_KEY, root / artefacts.SALT_CHECK
    expected = read_text(check).strip() if check.exists() else ""
    if not env and not path.exists():
        if expected:
            raise SaltMismatchError(
                f"{check}: this cache's patient keys were made with the salt of fingerprint {expected}, "
                f"but ${SALT_ENV} is not set and {path} is missing; expected that salt: export the "
                f"{SALT_ENV} used to build the cache (or restore salt.key) -- a new salt would give "
                "the same patient a second patient key")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    salt, source = (env, f"${SALT_ENV}") if env else (read_text(path).strip(), str(path))
    got = salt_fingerprint(salt)
    if expected and got != expected:
        raise SaltMismatchError(
            f"{check}: salt fingerprint {got} (from {source}); expected {expected}, the salt this cache "
            f"was built with: use the {SALT_ENV} that built it (or unset it to use {path}) -- "
            "two salts would give the same patient two patient keys")
    if record and not expected:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(check, (got + "\n").encode())
        logger.info("%s: salt fingerprint %s recorded (salt from %s)", check, got, source)
    return salt


def patient_key(raw_id: str, salt: str) -> str:
    """Pseudonymous patient key: first 16 hex of sha256(salt + id)."""
    return PatientId(raw_id).key(salt)


def identity(meta: ImageMeta, content_hash: str, salt: str, counts: Counter[str] | None = None) -> str:
    """patient_key from PatientID; else the study (one patient per study) or the file.
    ``counts`` (optional) tallies how many keys came from the study or the file."""
    counts = Counter() if counts is None else counts
    if meta.patient_id:
        return meta.patient_id.key(salt)
    if meta.study_uid and meta.source_format not in ("png", "jpeg"):
        counts["patient-from-study"] += 1
        return patient_key("study:" + meta.study_uid, salt)
    counts["patient-from-file"] += 1
    return patient_key("file:" + content_hash, salt)
