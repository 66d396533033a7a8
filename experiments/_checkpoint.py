"""Checkpoints that are written atomically and verified completely before use."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT = "neuralpde-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or not one of ours."""


def _digest(obj: Any, h=None) -> str:
    """SHA-256 over every tensor's bytes and every scalar, in a fixed order."""
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k!s}".encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(f"V{obj!r}".encode())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory,
    flushed to disk, then ``os.replace``. A crash leaves either the old file or the new
    one, never a mix. A digest of the contents is stored alongside for :func:`load_checkpoint`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "version": VERSION, "payload": payload, "digest": _digest(payload)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`; return its payload.

    Nothing is applied to any model here: a caller gets either a complete, verified payload
    or an exception.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted (unreadable, or its
            digest does not match), or it is not a neuralpde checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only: a checkpoint is data; loading one must never run code.
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable (truncated or corrupted: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "nothing was loaded"
        ) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a neuralpde checkpoint (no {FORMAT!r} header); it was "
            "written by something else — pass a last.pt or best.pt from experiments.train"
        )
    if body.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {body.get('version')!r}; this code reads "
            f"version {VERSION}"
        )
    payload = body.get("payload")
    if _digest(payload) != body.get("digest"):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted: its contents do not match their digest; "
            "nothing was loaded"
        )
    return payload


def check_state_dict(module: torch.nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``module``'s keys and
    shapes, so that ``load_state_dict`` cannot stop half-way."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or extra or bad:
        raise CheckpointError(
            f"{where}: the weights do not fit this network (missing {missing[:5]}, unexpected "
            f"{extra[:5]}, shape mismatches {bad[:5]}); nothing was loaded"
        )
