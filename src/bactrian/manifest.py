"""The `bactrian.json` manifest every output folder carries: tool version, full config, inputs, metrics."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .errors import DataError
from .fileio import atomic_write_json, file_sha256

MANIFEST = "bactrian.json"


def fingerprint_inputs(paths: list[str], include: Callable[[Path], bool] = lambda _: True) -> list[dict[str, str]]:
    """A sha256 for each local data file that `include` keeps (every file of a folder), the id for a hub
    dataset."""
    entries: list[dict[str, str]] = []
    for spec in paths:
        path = Path(spec)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and include(file):
                entries.append({"path": str(file), "sha256": file_sha256(file)})
        if not path.exists():
            entries.append({"hub_id": spec})
    return entries


SECRET_OPTIONS = ("api_key", "token", "secret", "password")


def public_config(config: Any) -> dict[str, Any]:
    """A config as a dict, with every secret option (API keys, tokens) masked, and credentials inside URLs
    (`user:pass@`, `?key=`): safe to write anywhere."""
    config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {key: "***" if value and any(word in key for word in SECRET_OPTIONS) else _without_credentials(value)
            for key, value in config_dict.items()}


URL_SECRET_PARAMETERS = ("key", "token", "secret", "password", "sig", "auth")


def _without_credentials(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_without_credentials(item) for item in value]
    if not isinstance(value, str) or "://" not in value:
        return value
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(value)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(word in name.lower() for word in URL_SECRET_PARAMETERS) for name, _ in pairs]
    if "@" not in parts.netloc and not any(secret):
        return value
    netloc = f"***@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    query = urlencode([(name, "***" if hidden else item) for (name, item), hidden in zip(pairs, secret)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def write_manifest(folder: Path, kind: str, config: Any, **sections: Any) -> None:
    config_dict = public_config(config)
    atomic_write_json(folder / MANIFEST, {
        "bactrian_version": __version__,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config_dict,
        **sections,
    })


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
