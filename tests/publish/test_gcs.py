"""Bundles on GCS, against the real gcp-storage-emulator on loopback: whole or refused, never half-taken."""
from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch

from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.publish import gcs
from chatpipe.tasks.train import checkpoint

from conftest import BUCKET, SECRET


def uri(name: str) -> str:
    return f"gs://{BUCKET}/models/{name}"


def remote(name: str, rel: str):
    from google.cloud import storage

    return storage.Client().bucket(BUCKET).blob(f"models/{name}/{rel}")


@pytest.fixture
def small_bundle(bundle_path, tmp_path):
    """A copy of the session's bundle that tests may change."""
    return shutil.copytree(bundle_path, tmp_path / "bundle")


def test_round_trip_with_a_resumable_upload(trained, gcs_env, tmp_path, caplog, capsys):
    layout, _ = trained
    model, _ = checkpoint.latest_model(layout.checkpoints / "full")
    big = os.urandom(9 << 20)  # > 8 MiB: google-cloud-storage switches to a resumable upload
    local = bundle.write(tmp_path / "big", model, layout.tokenizer, "# big\n", extra={"blobs/big.bin": big})
    caplog.set_level(logging.DEBUG)
    marker = gcs.upload(local, uri("big"), {"git_commit": "abc123"})
    assert "uploadType=resumable" in caplog.text
    assert set(marker["files"]) == set(bundle.checksums(local)) | {"checksums.json"}
    assert marker["bundle_sha256"] == bundle.digest(local) and marker["git_commit"] == "abc123"
    assert json.loads(remote("big", gcs.MARKER).download_as_bytes()) == marker

    got = gcs.download(uri("big"), tmp_path / "cache")
    assert got == tmp_path / "cache" / BUCKET / "models" / "big"
    assert (got / "blobs" / "big.bin").read_bytes() == big
    loaded = bundle.load(got)
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    torch.testing.assert_close(loaded.model(x)[0], model(x)[0], rtol=0, atol=0)
    mtime = (got / "model.safetensors").stat().st_mtime_ns
    assert gcs.download(uri("big"), tmp_path / "cache") == got  # current cache: reused, not fetched again
    assert (got / "model.safetensors").stat().st_mtime_ns == mtime

    leaks = [caplog.text, *capsys.readouterr(), json.dumps(marker), *(p.read_text(errors="replace")
             for p in got.rglob("*.json"))]
    assert not [text for text in leaks if SECRET in text]


def test_interrupted_upload_leaves_no_marker_and_is_refused(small_bundle, gcs_env, tmp_path, monkeypatch):
    from google.cloud.storage import Blob
    from requests.exceptions import ConnectionError

    gcs.upload(small_bundle, uri("cut"))
    assert remote("cut", gcs.MARKER).exists()
    real, calls = Blob.upload_from_filename, []

    def drops_the_third(self, *args, **kwargs):  # the connection dies on the third file of the re-publish
        calls.append(self.name)
        if len(calls) == 3:
            raise ConnectionError("connection reset by peer")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", drops_the_third)
    with pytest.raises(gcs.GCSError, match=r"uploading .* \(file 3 of 7; no marker written"):
        gcs.upload(small_bundle, uri("cut"))
    assert not remote("cut", gcs.MARKER).exists()  # the old marker went first, a new one never came
    with pytest.raises(InputError, match="not published or upload incomplete"):
        gcs.download(uri("cut"), tmp_path / "cache")
    assert not (tmp_path / "cache" / BUCKET / "models" / "cut").exists()


def test_a_changed_remote_object_is_refused(small_bundle, gcs_env, tmp_path):
    gcs.upload(small_bundle, uri("bad"))
    weights = small_bundle / "model.safetensors"
    flipped = bytearray(weights.read_bytes())
    flipped[-1] ^= 1  # one bit of one weight, same size
    remote("bad", "model.safetensors").upload_from_string(bytes(flipped))
    with pytest.raises(InputError, match=r"gs://chatpipe-test/models/bad/model.safetensors: checksum mismatch"):
        gcs.download(uri("bad"), tmp_path / "cache")
    cache = tmp_path / "cache" / BUCKET / "models"
    assert not [p for p in cache.iterdir()]  # no partial copy, not even a temp directory

    remote("bad", "model.safetensors").upload_from_filename(str(weights))
    remote("bad", "tokenizer.json").delete()
    with pytest.raises(InputError, match="tokenizer.json: missing"):
        gcs.download(uri("bad"), tmp_path / "cache")


def test_republish_removes_objects_the_bundle_no_longer_has(small_bundle, gcs_env, tmp_path):
    remote("re", "hf/model.safetensors").upload_from_string(b"left by an older publish")
    gcs.upload(small_bundle, uri("re"))
    assert not remote("re", "hf/model.safetensors").exists()
    bundle.load(gcs.download(uri("re"), tmp_path / "cache"))


def test_a_marker_naming_files_outside_the_bundle_is_refused(small_bundle, gcs_env, tmp_path):
    marker = gcs.upload(small_bundle, uri("evil"))
    marker["files"]["../../outside.txt"] = marker["files"]["README.md"]
    remote("evil", gcs.MARKER).upload_from_string(json.dumps(marker))
    with pytest.raises(InputError, match=r"unsafe file name '../../outside.txt'"):
        gcs.download(uri("evil"), tmp_path / "cache" / "deep")
    assert not (tmp_path / "cache" / "outside.txt").exists()


@pytest.mark.parametrize("bad, message", [
    ("s3://bucket/x", "expected gs://<bucket>/<path"),
    ("gs://bucket-only", "expected gs://<bucket>/<path"),
])
def test_bad_uri_is_one_line_error(bad, message):
    with pytest.raises(InputError, match=message):
        gcs.parse_uri(bad)


def test_missing_credentials_are_named_not_shown(small_bundle, monkeypatch, tmp_path, caplog):
    key = tmp_path / f"key-{SECRET}.json"
    key.write_text("{not json " + SECRET)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match="no usable Google Cloud credentials") as err:
        gcs.upload(small_bundle, uri("nocreds"))
    assert SECRET not in str(err.value) and SECRET not in caplog.text
