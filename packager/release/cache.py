"""The release's step cache: every finished step's result, keyed by the content of its inputs.

`<variant dir>/<step>.done.json` holds {"key": ..., "result": ...}; a rerun whose inputs give the same key reuses
the result. The key derivation and the file format are what existing run directories hold: change neither.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packager.fsutil import atomic_write_json, sha256_bytes


def cache_key(*parts: Any) -> str:
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


class StepCache:
    """`<dir>/<step>.done.json` holds the key of the inputs and the step's result; a matching key is a hit."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, step: str, key: str) -> Any | None:
        p = self.root / f"{step}.done.json"
        if not p.exists():
            return None
        data = json.loads(p.read_text())
        return data["result"] if data.get("key") == key else None

    def put(self, step: str, key: str, result: Any) -> None:
        atomic_write_json(self.root / f"{step}.done.json", {"key": key, "result": result})
