"""One identity for every artifact.

Every checkpoint, CAM store and pseudo-mask set is keyed by everything that determines it:
what it is (``kind``), its full settings (``spec``), the data it was made from (``data``:
a dataset split's content fingerprint), the keys of the artifacts it reads (``upstream``)
and the seed. The key's digest names the file and is written into it, so a changed setting
anywhere upstream gives a new file instead of silently reusing an old one, and any artifact
can say what made it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store

IDENTITY_FILE = "identity.json"  # beside the data of a folder artifact (pseudo-masks)


@dataclass(frozen=True)
class ArtifactKey:
    kind: str
    spec: Mapping[str, Any]
    data: str = ""
    upstream: Mapping[str, str] = field(default_factory=dict)
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": store._jsonable(dict(self.spec)), "data": self.data,
                "upstream": dict(self.upstream), "seed": self.seed}

    @property
    def digest(self) -> str:
        """16 hex digits of the sha256 of the canonical key."""
        return store.hash_obj(self.to_dict())[:16]

    def path(self, folder: str | os.PathLike[str], name: str, suffix: str = ".pt") -> Path:
        """``folder/<name>-<digest><suffix>``: the artifact's file name carries its identity."""
        tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
        return Path(folder) / f"{tag}-{self.digest}{suffix}"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ArtifactKey":
        return cls(values["kind"], dict(values["spec"]), values.get("data", ""), dict(values.get("upstream", {})),
                   values.get("seed"))


def spec_dict(obj: Any) -> dict[str, Any]:
    """A dataclass (spec, training config) or mapping as plain data for a key."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return store._jsonable(dataclasses.asdict(obj))
    return store._jsonable(dict(obj))


def write_key(folder: str | os.PathLike[str], key: ArtifactKey) -> None:
    """Record a folder artifact's key (its content is then fingerprinted by it)."""
    store.write_json(Path(folder) / IDENTITY_FILE, {**key.to_dict(), "digest": key.digest})


def read_key(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(folder) / IDENTITY_FILE
    return store.read_json(path) if path.exists() else None
