"""The artifact store (tasks/publish/store.py): whole directories by key, a marker written last, verified fetches;
on a local directory and on the GCS emulator."""
import pytest

from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.publish.store import MARKER, Store

from conftest import BUCKET


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"\x00\x01" * 5000)
    (src / "sub" / "b.json").write_text('{"b": 1}')
    return src


@pytest.fixture(params=["local", "gs"])
def store(request, tmp_path):
    if request.param == "local":
        return Store("the-store", tmp_path)  # relative: under the workdir
    request.getfixturevalue("gcs_env")
    return Store(f"gs://{BUCKET}/store-{tmp_path.name}")


def test_round_trip_and_reuse(store, tree, tmp_path):
    assert store.keys("things") == []
    key = store.put_content(tree, "things")
    uri = store.put(tree, key)  # already there whole: nothing uploaded again
    assert uri == store.url(key) and store.keys("things") == [key]
    got = store.fetch(key, tmp_path / "got")
    assert (got / "a.bin").read_bytes() == (tree / "a.bin").read_bytes()
    assert (got / "sub" / "b.json").read_text() == '{"b": 1}'
    mtime = (got / "a.bin").stat().st_mtime_ns
    assert store.fetch(key, got) == got and (got / "a.bin").stat().st_mtime_ns == mtime  # a matching copy is kept


def test_an_upload_without_its_marker_is_not_present(store, tree, tmp_path):
    store.put(tree, "k/1")
    store.backend.delete(f"k/1/{MARKER}")  # what an upload cut before its last object leaves
    assert store.keys("k") == []
    with pytest.raises(InputError, match=rf"k/1: not in the store, or its upload is incomplete \(no {MARKER}\)"):
        store.fetch("k/1", tmp_path / "got")
    assert not (tmp_path / "got").exists()


def test_a_corrupt_transfer_is_fetched_once_more(store, tree, tmp_path, monkeypatch):
    store.put(tree, "k/2")
    real, calls = store.backend.get, []

    def flaky(name, path):  # the first transfer of a.bin arrives damaged
        real(name, path)
        calls.append(name)
        if name.endswith("a.bin") and calls.count(name) == 1:
            path.write_bytes(b"damaged")
    monkeypatch.setattr(store.backend, "get", flaky)
    got = store.fetch("k/2", tmp_path / "got")
    assert (got / "a.bin").read_bytes() == (tree / "a.bin").read_bytes() and calls.count("k/2/a.bin") == 2


def test_a_corrupt_object_is_one_line_naming_it(store, tree, tmp_path):
    store.put(tree, "k/3")
    store.backend.put_bytes("k/3/sub/b.json", b'{"b": 2}')  # changed in the store after upload
    with pytest.raises(InputError) as e:
        store.fetch("k/3", tmp_path / "got")
    assert str(e.value) == (f"{store.url('k/3')}/sub/b.json: checksum mismatch against {MARKER} (fetched twice); "
                            "the object is corrupt or was changed after upload: re-upload it")
    assert not (tmp_path / "got").exists()


def test_an_object_missing_behind_its_marker_is_named(store, tree, tmp_path):
    store.put(tree, "k/4")
    store.backend.delete("k/4/a.bin")
    with pytest.raises(InputError, match=r"k/4/a.bin: missing from the store"):
        store.fetch("k/4", tmp_path / "got")


def test_missing_key(store, tmp_path):
    with pytest.raises(InputError, match="not in the store"):
        store.fetch("nothing/here", tmp_path / "got")


@pytest.mark.parametrize("uri", ["s3://bucket/x", "gs://", "ftp://host/x"])
def test_bad_uri_is_one_line(uri):
    with pytest.raises(ConfigError, match=r"^params: store.uri: .*expected"):
        Store(uri)


def test_missing_bucket_is_one_line(gcs_env, tree):
    for use in (Store.check, lambda store: store.put(tree, "k")):  # check: what the flow does before any work
        with pytest.raises(InputError, match=r"^gs://no-such-bucket/p: bucket no-such-bucket not found"):
            use(Store("gs://no-such-bucket/p"))


def test_the_default_is_a_directory_in_the_workdir(tmp_path, tree):
    store = Store(None, tmp_path)
    store.check()
    assert store.uri == str(tmp_path / "store") and store.put(tree, "k/5") == str(tmp_path / "store" / "k" / "5")
