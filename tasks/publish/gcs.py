"""Model bundles on Google Cloud Storage: an upload readers see whole or not at all, and its download.

- Layout: `gs://<bucket>/<prefix>/<name>/` holds the bundle's files plus a marker `_PUBLISHED` (every
  file's size, crc32c and sha256, the bundle's digest, the time, the code's commit).
- Upload: the marker is deleted first and written last, after every object's crc32c (as GCS computed it)
  matched the local file's; an interrupted or in-progress publish leaves no marker.
- `download`: refuses a prefix without a marker, checks each file's sha256 against the marker and the
  bundle's own checksums, and builds the copy in a temp directory renamed into place.
- Credentials: only from the environment, through `storage.Client()` (application default credentials;
  with `STORAGE_EMULATOR_HOST`, that emulator, anonymously). Never read, logged or stored here, and no
  error quotes a credentials error's text (it can name key files).
- The Google libraries are the gcs extra, imported on first use: without them a gs:// URI is one
  ConfigError line naming the extra.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from pathlib import Path, PurePosixPath
from typing import Iterator

from chatpipe.tasks.common import atomic, bundle
from chatpipe.tasks.common.errors import ChatpipeError, ConfigError, InputError
from chatpipe.tasks.common.hashing import sha256_file

log = logging.getLogger("chatpipe.gcs")
_auth_log = logging.getLogger("google.auth")  # its DEBUG records name the credentials file
_auth_log.setLevel(max(_auth_log.level, logging.INFO))
MARKER = "_PUBLISHED"
MARKER_FORMAT = "chat-pipeline-published/1"
NEEDS_EXTRA = "gs:// bundles (publish and download) need the gcs extra: pip install 'chat-pipeline[gcs]'"


class GCSError(ChatpipeError):
    """GCS could not be reached or refused an operation; nothing was marked as published."""


def parse_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` → ("bucket", "some/prefix")."""
    rest = uri[len("gs://"):] if uri.startswith("gs://") else None
    bucket, _, path = (rest or "").partition("/")
    if not bucket or not path.strip("/"):
        raise InputError(f"{uri!r}: expected gs://<bucket>/<path to a published bundle>")
    return bucket, path.strip("/")


def require() -> None:
    """ConfigError in one line if the gcs extra (google-cloud-storage and what it brings) is not installed."""
    try:
        import google.api_core.exceptions  # noqa: F401
        import google.auth.exceptions  # noqa: F401
        import google.cloud.storage  # noqa: F401
        import google_crc32c  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("google", "google_crc32c"):
            raise  # not the extra itself: something its packages need is broken
        raise ConfigError(NEEDS_EXTRA) from None


def crc32c(path: Path) -> str:
    """A file's CRC32C as GCS reports it: base64 of the big-endian 4 bytes."""
    require()
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


@contextlib.contextmanager
def errors(uri: str, action: str, missing: str | None = None) -> Iterator[None]:
    """GCS and auth failures as one line naming the URI (`missing`: the message for a 404); a credentials
    error's text is never shown."""
    require()
    from google.api_core import exceptions as api
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
    from requests.exceptions import RequestException

    try:
        yield
    except GoogleAuthError:
        raise ConfigError(f"{uri}: {action}: no usable Google Cloud credentials in the environment (set "
                          "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`)") from None
    except api.NotFound:
        raise InputError(missing or f"{uri}: {action}: not found (does the bucket exist?)") from None
    except api.Forbidden:
        raise ConfigError(f"{uri}: {action}: access denied; the credentials lack permission on the bucket") from None
    except DataCorruption:
        raise InputError(f"{uri}: {action}: crc32c mismatch in transfer (corrupt object or connection)") from None
    except (api.GoogleAPICallError, InvalidResponse, RequestException) as e:
        detail = getattr(e, "message", None) or type(e).__name__
        raise GCSError(f"{uri}: {action} failed: {detail}") from None


def client(uri: str):
    """A storage client from the environment's credentials (or the emulator's, anonymously)."""
    require()
    from google.cloud import storage

    with errors(uri, "connecting"):
        return storage.Client()


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def upload(directory: Path, uri: str, info: dict | None = None) -> dict:
    """Upload the bundle `directory` to `uri` (gs://bucket/prefix/name); return the marker written last.

    `info` is added to the marker (e.g. the git commit). Objects under the prefix that the bundle does
    not have (left by an older publish) are deleted before the marker is written.
    """
    require()
    from google.api_core.exceptions import NotFound

    directory = Path(directory)
    bucket_name, base = parse_uri(uri)
    gcs = client(uri)
    bucket = gcs.bucket(bucket_name)
    files, entries = _files(directory), {}
    with errors(uri, "removing the old _PUBLISHED marker"):
        with contextlib.suppress(NotFound):
            bucket.blob(f"{base}/{MARKER}").delete()
    for n, rel in enumerate(files, 1):
        path = directory / rel
        with errors(uri, f"uploading {rel} (file {n} of {len(files)}; no marker written, re-run to publish)"):
            blob = bucket.blob(f"{base}/{rel}")
            blob.upload_from_filename(str(path), checksum="crc32c")
            if blob.crc32c is None:
                blob.reload()
        entries[rel] = {"size": path.stat().st_size, "crc32c": crc32c(path), "sha256": sha256_file(path)}
        if blob.crc32c != entries[rel]["crc32c"] or blob.size != entries[rel]["size"]:
            raise GCSError(f"{uri}/{rel}: the stored object's crc32c/size ({blob.crc32c}, {blob.size} bytes) do not "
                           f"match the local file's ({entries[rel]['crc32c']}, {entries[rel]['size']} bytes); "
                           "no marker written")
        log.info("uploaded %s/%s (%d bytes)", uri, rel, entries[rel]["size"])
    marker = {"format": MARKER_FORMAT, "uri": uri, "bundle_sha256": bundle.digest(directory),
              "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {}),
              "files": entries}
    with errors(uri, "writing the _PUBLISHED marker"):
        for blob in gcs.list_blobs(bucket, prefix=f"{base}/"):
            if blob.name[len(base) + 1:] not in entries:
                blob.delete()
        bucket.blob(f"{base}/{MARKER}").upload_from_string(json.dumps(marker, indent=2),
                                                             content_type="application/json")
    return marker


def _read_marker(bucket, base: str, uri: str) -> dict:
    with errors(uri, "reading the marker", missing=f"{uri}: not published or upload incomplete (no {MARKER} marker)"):
        data = bucket.blob(f"{base}/{MARKER}").download_as_bytes()
    try:
        marker = json.loads(data)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or \
            not isinstance(marker.get("files"), dict) or "checksums.json" not in marker["files"]:
        raise InputError(f"{uri}/{MARKER}: not a chat-pipeline publish marker")
    check_names(marker["files"], f"{uri}/{MARKER}")
    return marker


def check_names(files: dict, where: str) -> None:
    """A marker may name only relative paths inside its directory: InputError naming the first that is not."""
    for rel in files:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise InputError(f"{where}: unsafe file name {rel!r}")


def _is_current(local: Path, marker: dict) -> bool:
    """A cached copy is used only if it is whole and is the bundle the marker describes."""
    try:
        bundle.verify(local)
    except InputError:
        return False
    return bundle.digest(local) == marker.get("bundle_sha256")


def download(uri: str, cache_dir: Path) -> Path:
    """The published bundle at `uri` as a verified local directory under `cache_dir` (reused if current)."""
    bucket_name, base = parse_uri(uri)
    bucket = client(uri).bucket(bucket_name)
    marker = _read_marker(bucket, base, uri)
    local = Path(cache_dir) / bucket_name / base
    if _is_current(local, marker):
        return local
    with atomic.atomic_dir(local) as tmp:
        for rel, entry in marker["files"].items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with errors(uri, f"downloading {rel}",
                         missing=f"{uri}/{rel}: missing; the upload is incomplete or being replaced"):
                bucket.blob(f"{base}/{rel}").download_to_filename(str(target), checksum="crc32c")
            if sha256_file(target) != entry.get("sha256"):
                raise InputError(f"{uri}/{rel}: checksum mismatch against {MARKER}; the object was changed "
                                 "or corrupted after publishing (re-publish it)")
        bundle.verify(tmp, label=uri)
        if bundle.digest(tmp) != marker.get("bundle_sha256"):
            raise InputError(f"{uri}: checksums.json does not match {MARKER}'s bundle digest")
    log.info("downloaded %s → %s", uri, local)
    return local
