"""The artifact store: the directories another machine needs, put whole under a content key, fetched verified.

Why: a training phase dispatched to a GPU box elsewhere shares no disk with the flow, so its inputs
(tokenizer, shards, the checkpoint it starts from) and outputs (checkpoints, metrics) travel through this
store, and the flow and the worker pass each other only keys and URIs (flows/train_worker.py).

- Where: `store.uri`, a local directory (default `<workdir>/store`) or `gs://bucket/prefix`.
- Whole or absent: a directory is its files under `<uri>/<key>/` plus a marker `_COMPLETE` (every file's
  size and sha256), deleted before an upload and written last, as tasks/publish/gcs.py does for bundles.
- `fetch`: refuses a key without a marker, reuses a local copy that matches it, else downloads into a temp
  directory renamed into place, checking every sha256; a missing or mismatched object is fetched once
  more, then it is one InputError line.
- Backends: a registry by URI scheme, each only moving bytes (a new store is a new class). The GCS one
  reuses tasks/publish/gcs.py's client and one-line errors; gcsfs serves only Prefect's result storage.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.publish import gcs

MARKER = "_COMPLETE"
FORMAT = "chat-pipeline-store/1"


class LocalBackend:
    """Objects as files under a directory."""

    def __init__(self, uri: str, base: Path):
        path = Path(uri.removeprefix("file://")).expanduser()
        self.root = path if path.is_absolute() else (base / path).resolve()
        self.uri = str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"params: store.uri: cannot create {self.root} ({e.strerror})") from None

    def put(self, name: str, path: Path) -> None:
        atomic.write_bytes(self.root / name, Path(path).read_bytes())

    def put_bytes(self, name: str, data: bytes) -> None:
        atomic.write_bytes(self.root / name, data)

    def get(self, name: str, path: Path) -> None:
        try:
            shutil.copyfile(self.root / name, path)
        except FileNotFoundError:
            raise InputError(f"{self.root / name}: missing from the store") from None

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def names(self, prefix: str) -> list[str]:
        top = self.root / prefix
        return sorted(str(p.relative_to(self.root)) for p in top.rglob("*") if p.is_file()) if top.is_dir() else []


class GCSBackend:
    """Objects in a bucket, through tasks/publish/gcs.py's client and errors."""

    def __init__(self, uri: str, base: Path):
        rest = uri.removeprefix("gs://").strip("/")
        self.bucket_name, _, self.prefix = rest.partition("/")
        if not self.bucket_name:
            raise ConfigError(f"params: store.uri: {uri!r}: expected gs://<bucket>[/<prefix>]")
        self.uri = f"gs://{rest}"
        self._bucket = None

    def check(self) -> None:
        """Open the bucket, once: a missing one is one line naming it."""
        if self._bucket is None:
            with gcs.errors(self.uri, "opening the bucket", missing=f"{self.uri}: bucket {self.bucket_name} "
                            "not found; create it or fix store.uri"):
                self._bucket = gcs.client(self.uri).get_bucket(self.bucket_name)

    @property
    def bucket(self):
        self.check()
        return self._bucket

    def _name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, path: Path) -> None:
        with gcs.errors(f"{self.uri}/{name}", "uploading"):
            self.bucket.blob(self._name(name)).upload_from_filename(str(path), checksum="crc32c")

    def put_bytes(self, name: str, data: bytes) -> None:
        with gcs.errors(f"{self.uri}/{name}", "uploading"):
            self.bucket.blob(self._name(name)).upload_from_string(data)

    def get(self, name: str, path: Path) -> None:
        uri = f"{self.uri}/{name}"
        with gcs.errors(uri, "downloading", missing=f"{uri}: missing from the store"):
            self.bucket.blob(self._name(name)).download_to_filename(str(path), checksum=None)  # sha256 below

    def get_bytes(self, name: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        blob = self.bucket.blob(self._name(name))
        with gcs.errors(f"{self.uri}/{name}", "reading"):
            try:
                return blob.download_as_bytes()
            except NotFound:
                return None

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        with gcs.errors(f"{self.uri}/{name}", "deleting"):
            try:
                self.bucket.blob(self._name(name)).delete()
            except NotFound:
                pass

    def names(self, prefix: str) -> list[str]:
        start = len(self._name(""))
        with gcs.errors(f"{self.uri}/{prefix}", "listing"):
            return sorted(b.name[start:] for b in self.bucket.client.list_blobs(self.bucket, prefix=self._name(prefix)))


BACKENDS = {"file": LocalBackend, "gs": GCSBackend}


def _entries(directory: Path) -> dict[str, dict]:
    """What a marker lists: each file's size and sha256, by its path under `directory`."""
    files = (p for p in sorted(Path(directory).rglob("*")) if p.is_file())
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}


class Store:
    """Directories under keys, on the backend `store.uri` names: `put`, `fetch` (verified), `keys`."""

    def __init__(self, uri: str | None, base: Path = Path(".")):
        """`uri`: store.uri (None: `<base>/store`); relative paths resolve against `base` (the workdir)."""
        uri = uri or "store"
        scheme = uri.partition("://")[0] if "://" in uri else "file"
        if scheme not in BACKENDS:
            raise ConfigError(f"params: store.uri: {uri!r}: expected a directory or one of "
                              f"{', '.join(f'{s}://' for s in BACKENDS if s != 'file')}")
        self.backend = BACKENDS[scheme](uri, Path(base))
        self.uri = self.backend.uri

    def check(self) -> None:
        """One line now, before any work, if the store cannot be used (a missing bucket, no credentials)."""
        self.backend.check()

    def url(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def marker(self, key: str) -> dict | None:
        data = self.backend.get_bytes(f"{key}/{MARKER}")
        try:
            marker = json.loads(data) if data is not None else None
        except ValueError:
            marker = None
        if marker is None:
            return None
        if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("files"), dict):
            raise InputError(f"{self.url(key)}/{MARKER}: not a chat-pipeline store marker")
        gcs.check_names(marker["files"], f"{self.url(key)}/{MARKER}")
        return marker

    def put(self, directory: Path, key: str, entries: dict | None = None) -> str:
        """Upload `directory` under `key` (skipped when the store already holds it whole); its URI. `entries`: its
        files' sizes and hashes when the caller has them (`put_content`), else read here."""
        directory = Path(directory)
        entries = entries or _entries(directory)
        existing = self.marker(key)
        if existing and existing["files"] == entries:
            return self.url(key)
        self.backend.delete(f"{key}/{MARKER}")
        for rel in entries:
            self.backend.put(f"{key}/{rel}", directory / rel)
        self.backend.put_bytes(f"{key}/{MARKER}", json.dumps({"format": FORMAT, "files": entries}, indent=1).encode())
        return self.url(key)

    def put_content(self, directory: Path, kind: str) -> str:
        """Upload `directory` under its content key, `<kind>/<sha256 of its files' names, sizes and hashes>` (one
        reading of its files for the key and the marker); the key."""
        entries = _entries(directory)
        key = f"{kind}/{hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()}"
        self.put(directory, key, entries)
        return key

    def keys(self, prefix: str) -> list[str]:
        """Keys under `prefix` whose upload is complete (a marker), sorted."""
        return sorted({n.rsplit("/", 1)[0] for n in self.backend.names(f"{prefix}/") if n.endswith(f"/{MARKER}")})

    def fetch(self, key: str, into: Path) -> Path:
        """The directory stored under `key` at `into`, verified; a local copy that matches is kept."""
        into = Path(into)
        marker = self.marker(key)
        if marker is None:
            raise InputError(f"{self.url(key)}: not in the store, or its upload is incomplete (no {MARKER})")
        if _matches(into, marker["files"]):
            return into
        with atomic.atomic_dir(into) as tmp:
            for rel, entry in marker["files"].items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                for attempt in (1, 2):  # a corrupt or failed transfer is fetched once more
                    try:
                        self.backend.get(f"{key}/{rel}", target)
                    except InputError:  # missing: its message names it
                        if attempt == 2:
                            raise
                        continue
                    if sha256_file(target) == entry["sha256"]:
                        break
                else:
                    raise InputError(f"{self.url(key)}/{rel}: checksum mismatch against {MARKER} (fetched twice); "
                                     "the object is corrupt or was changed after upload: re-upload it")
        return into

    def result_block(self):
        """A Prefect filesystem block over `<store>/prefect-results`, for task and flow results (unsaved)."""
        from prefect.filesystems import LocalFileSystem, RemoteFileSystem

        if isinstance(self.backend, LocalBackend):
            return LocalFileSystem(basepath=str(self.backend.root / "prefect-results"))
        anonymous = {"token": "anon"} if os.environ.get("STORAGE_EMULATOR_HOST") else {}
        return RemoteFileSystem(basepath=f"{self.uri}/prefect-results", settings=anonymous)


def _matches(directory: Path, files: dict) -> bool:
    if not directory.is_dir():
        return False
    present = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    return present == set(files) and all(sha256_file(directory / rel) == e["sha256"] for rel, e in files.items())
