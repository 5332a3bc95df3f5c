"""mentor_ray.storage against real filesystems: a local path, a file:// URI and a moto S3 server
(tests/s3_server.py, one per session). What is written is checked independently of the module
under test (plain open() locally, boto3 on S3), so a storage layer that writes somewhere else or
not at all fails."""

from __future__ import annotations

import filecmp
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from mentor_ray import storage

KINDS = ["local", "file", "s3"]


@pytest.fixture
def s3(s3_bucket, monkeypatch):
    """The session's S3 server with its endpoint, keys and region in os.environ."""
    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    return s3_bucket


@pytest.fixture(params=KINDS)
def root(request, tmp_path):
    """(kind, an empty folder location of that kind, a function reading a location's bytes
    without mentor_ray.storage)."""
    kind = request.param
    if kind == "s3":
        server = request.getfixturevalue("s3")
        location = server.uri(f"t-{uuid.uuid4().hex[:12]}")
        client = _boto3_client(server)

        def raw_read(loc: str) -> bytes:
            key = unquote(urlsplit(loc).path).lstrip("/")
            return client.get_object(Bucket=server.bucket, Key=key)["Body"].read()

        return kind, location, raw_read
    folder = tmp_path / "root"
    location = str(folder) if kind == "local" else folder.as_uri()

    def raw_read(loc: str) -> bytes:
        return Path(unquote(urlsplit(loc).path) if kind == "file" else loc).read_bytes()

    return kind, location, raw_read


def _boto3_client(server):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.env["AWS_DEFAULT_REGION"],
        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
    )


def _make_tree(base: Path) -> dict[str, bytes]:
    files = {
        "config.yaml": b"seed: 42\nname: run\n",
        "metrics.jsonl": b'{"step": 1}\n{"step": 2}\n',
        "empty.txt": b"",
        "checkpoints/step_2/weights.bin": bytes(range(256)) * 300,
        "checkpoints/step_2/meta/info.json": "{\"note\": \"é ✓\"}".encode(),
        "plots/reward.png": os.urandom(5000),
    }
    for name, data in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    return files


# ----------------------------------------------------------------------------- locations


def test_is_uri():
    for uri in ("s3://b/p", "gs://b", "file:///abs/p", "hdfs://host:8020/p", "abfs://c@a.dfs.core.windows.net/p"):
        assert storage.is_uri(uri), uri
    for path in ("runs/x", "/abs/runs", "~/runs", "./a:b", "C:\\runs", "", Path("/x")):
        assert not storage.is_uri(path), path


def test_join_keeps_the_kind_of_location():
    assert storage.join("s3://bucket/runs", "a", "b.txt") == "s3://bucket/runs/a/b.txt"
    assert storage.join("s3://bucket", "a") == "s3://bucket/a"
    assert storage.join("s3://bucket/runs/", "/a/", "b") == "s3://bucket/runs/a/b"
    assert (
        storage.join("s3://bucket/runs?scheme=http&endpoint_override=h%3A9000", "x.txt")
        == "s3://bucket/runs/x.txt?scheme=http&endpoint_override=h%3A9000"
    )
    assert storage.join("file:///abs/runs", "x") == "file:///abs/runs/x"
    assert storage.join("runs", "a", "b.txt") == os.path.join("runs", "a", "b.txt")
    assert storage.join("~/runs", "a") == os.path.join("~/runs", "a")
    assert storage.join("s3://bucket/runs") == "s3://bucket/runs"
    assert storage.join("s3://bucket/runs", "a b", "lr=0.1,x=2#é") == "s3://bucket/runs/a%20b/lr=0.1,x=2%23%C3%A9"


def test_resolve_local_and_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filesystem, path = storage.resolve("runs/a")
    assert filesystem.type_name == "local" and path == str(tmp_path / "runs" / "a")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage.resolve("~/runs")[1] == str(tmp_path / "runs")
    filesystem, path = storage.resolve((tmp_path / "x").as_uri())
    assert filesystem.type_name == "local" and path == str(tmp_path / "x")


# ----------------------------------------------------------------------------- files


def test_text_and_bytes_round_trip(root):
    _kind, base, raw_read = root
    text_at = storage.join(base, "deep", "er", "notes.txt")
    bytes_at = storage.join(base, "blob.bin")
    text = "step 1 ✓ — reward 0.5\nstep 2\n"
    blob = bytes(range(256)) * 4

    storage.write_text(text_at, text)
    storage.write_bytes(bytes_at, blob)

    assert storage.read_text(text_at) == text
    assert storage.read_bytes(bytes_at) == blob
    assert raw_read(text_at) == text.encode("utf-8")  # really there, seen from outside
    assert raw_read(bytes_at) == blob

    storage.write_text(text_at, "replaced")
    assert storage.read_text(text_at) == "replaced"

    assert storage.exists(text_at) and storage.is_file(text_at) and not storage.is_dir(text_at)
    folder = storage.join(base, "deep")
    assert storage.exists(folder) and storage.is_dir(folder) and not storage.is_file(folder)
    missing = storage.join(base, "missing.txt")
    assert not storage.exists(missing) and not storage.is_file(missing) and not storage.is_dir(missing)


def test_names_that_need_escaping_in_a_uri(root):
    _kind, base, raw_read = root  # raw_read decodes the URI independently of storage
    names = ["odd name é/lr=0.1,seed=2 #1.txt", "100% done?.txt"]
    for name in names:
        location = storage.join(base, name)
        storage.write_text(location, name)
        assert storage.read_text(location) == name
    assert storage.list_files(base, recursive=True) == sorted(names)
    assert raw_read(storage.join(base, names[0])) == names[0].encode()


def test_listing(root):
    _kind, base, _ = root
    for name in ("a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.txt", "other/e.txt"):
        storage.write_text(storage.join(base, name), name)

    assert storage.list_files(base) == ["a.txt", "b.txt"]
    assert storage.list_files(base, recursive=True) == [
        "a.txt", "b.txt", "other/e.txt", "sub/c.txt", "sub/deeper/d.txt",
    ]
    assert storage.list_files(storage.join(base, "sub"), recursive=True) == ["c.txt", "deeper/d.txt"]
    assert storage.list_dirs(base) == ["other", "sub"]
    with pytest.raises(storage.StorageNotFoundError, match="missing"):
        storage.list_files(storage.join(base, "missing"))


def test_make_and_delete_dirs(root):
    _kind, base, _ = root
    folder = storage.join(base, "a", "b")
    storage.make_dirs(folder)
    storage.make_dirs(folder)  # fine if it exists
    assert storage.is_dir(folder)
    storage.write_text(storage.join(folder, "x.txt"), "x")
    storage.write_text(storage.join(base, "keep.txt"), "keep")

    storage.delete_dir(storage.join(base, "a"))
    assert not storage.exists(storage.join(base, "a"))
    assert not storage.exists(storage.join(folder, "x.txt"))
    assert storage.read_text(storage.join(base, "keep.txt")) == "keep"
    storage.delete_dir(storage.join(base, "a"))  # missing: nothing happens


def test_missing_file_is_storage_not_found(root):
    _kind, base, _ = root
    with pytest.raises(storage.StorageNotFoundError, match="nope.txt") as caught:
        storage.read_text(storage.join(base, "nope.txt"))
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)


# ----------------------------------------------------------------------------- trees


def test_upload_and_download_tree_byte_for_byte(root, tmp_path):
    _kind, base, raw_read = root
    source = tmp_path / "source"
    files = _make_tree(source)
    remote = storage.join(base, "run-1")

    storage.upload_dir(source, remote)
    assert storage.list_files(remote, recursive=True) == sorted(files)
    assert raw_read(storage.join(remote, "checkpoints/step_2/weights.bin")) == files["checkpoints/step_2/weights.bin"]

    target = tmp_path / "target"
    storage.download_dir(remote, target)
    got = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert got == sorted(files)
    for name in files:
        assert filecmp.cmp(source / name, target / name, shallow=False), name

    with pytest.raises(storage.StorageNotFoundError):
        storage.download_dir(storage.join(base, "missing"), tmp_path / "never")
    with pytest.raises(storage.StorageNotFoundError):
        storage.upload_dir(tmp_path / "no-such-dir", remote)


def test_local_copy(root, tmp_path):
    kind, base, _ = root
    source = tmp_path / "source"
    files = _make_tree(source)
    remote = storage.join(base, "run-2")
    storage.upload_dir(source, remote)

    with storage.local_copy(remote) as folder:
        assert folder.is_dir()
        for name, data in files.items():
            assert (folder / name).read_bytes() == data, name
        if kind == "s3":
            assert not str(folder).startswith(str(tmp_path))  # a temporary download
        else:
            assert folder == tmp_path / "root" / "run-2"  # the folder itself, not a copy
    if kind == "s3":
        assert not folder.exists()  # removed afterwards
    else:
        assert folder.is_dir()  # never delete the user's own folder

    with pytest.raises(storage.StorageNotFoundError), storage.local_copy(storage.join(base, "missing")):
        pass


# ----------------------------------------------------------------------------- S3 configuration


def test_aws_endpoint_url_alone_is_honoured(s3, monkeypatch):
    # The fixture sets AWS_ENDPOINT_URL_S3 too; the generic variable must suffice on its own.
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    location = s3.uri(f"t-{uuid.uuid4().hex[:8]}", "x.txt")
    storage.write_text(location, "via AWS_ENDPOINT_URL")
    assert storage.read_text(location) == "via AWS_ENDPOINT_URL"
    filesystem, path = storage.resolve(location)
    assert filesystem.type_name == "s3" and path == location.removeprefix("s3://")


def test_s3_paths_match_pyarrow(s3):
    import pyarrow.fs

    for uri in (
        s3.uri("a", "b.txt"),
        s3.uri("a/"),
        f"s3://{s3.bucket}",
        storage.join(s3.uri("x"), "odd name é", "lr=0.1,#2"),
        f"s3://{s3.bucket}/p?region=eu-west-1&scheme=http",
    ):
        assert storage.resolve(uri)[1] == pyarrow.fs.FileSystem.from_uri(uri)[1].rstrip("/"), uri


def test_uri_query_parameters_still_work(s3, monkeypatch):
    # No endpoint in the environment: the URI's own pyarrow query parameters carry it.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    host = s3.endpoint_url.removeprefix("http://")
    base = f"s3://{s3.bucket}/t-{uuid.uuid4().hex[:8]}?endpoint_override={host}&scheme=http&region=us-east-1"
    location = storage.join(base, "q.txt")
    storage.write_text(location, "query")
    assert storage.read_text(location) == "query"
    assert storage.list_files(base) == ["q.txt"]


# ----------------------------------------------------------------------------- errors


def _assert_clean(error: BaseException, location: str) -> None:
    message = str(error)
    assert location in message
    assert "Traceback" not in message
    # raised `from None`: pyarrow's own exception is not chained onto the user's traceback
    assert error.__cause__ is None and error.__suppress_context__


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(storage.StorageError, match="scheme 'nosuch'") as caught:
        storage.resolve("nosuch://bucket/run")
    _assert_clean(caught.value, "nosuch://bucket/run")
    assert isinstance(caught.value, ValueError)
    with pytest.raises(storage.StorageError, match="Unexpected query parameter"):
        storage.resolve("s3://bucket/run?bogus=1")


def test_missing_bucket_is_a_clear_error(s3):
    location = "s3://no-such-bucket-here/run"
    with pytest.raises(storage.StorageError, match="bucket does not exist") as caught:
        storage.make_dirs(location)
    _assert_clean(caught.value, location)
    with pytest.raises(storage.StorageError, match="bucket does not exist") as caught:
        storage.write_text(location + "/a.txt", "x")
    _assert_clean(caught.value, location + "/a.txt")
    with pytest.raises(storage.StorageError, match="bucket does not exist"):
        storage.ray_storage(location)


def test_unreachable_server_is_a_clear_error(s3, monkeypatch):
    dead = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    location = s3.uri("run")
    with pytest.raises(storage.StorageError, match="cannot reach the storage server") as caught:
        storage.exists(location)  # one request, which the AWS SDK retries for about 6 s
    _assert_clean(caught.value, location)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- Ray


def test_ray_storage_local(tmp_path):
    folder = tmp_path / "runs" / "exp"
    assert storage.ray_storage(str(folder)) == {"storage_path": str(folder)}
    assert folder.is_dir()
    assert storage.ray_storage(folder.as_uri()) == {"storage_path": str(folder)}


_WORKER = """
import pickle, sys
# Imported first, as in every Ray worker (Ray's storage module imports it): pyarrow.fs registers
# the S3 shutdown at exit; a process that only unpickles an S3 filesystem crashes when it exits.
import pyarrow.fs
filesystem, path = pickle.loads(sys.stdin.buffer.read())
with filesystem.open_output_stream(path + "/from_worker.txt") as stream:
    stream.write(b"written by a fresh process")
print(filesystem.type_name)
"""


def test_ray_storage_s3_filesystem_travels_to_a_fresh_process(s3):
    location = s3.uri(f"t-{uuid.uuid4().hex[:8]}", "sweep")
    kwargs = storage.ray_storage(location)
    assert kwargs["storage_path"] == location.removeprefix("s3://")  # what Ray wants with a filesystem
    assert storage.is_dir(location)  # created up front
    payload = pickle.dumps((kwargs["storage_filesystem"], kwargs["storage_path"]))

    # A worker on another node: credentials and region from its own environment, but no endpoint
    # variables, so the endpoint must travel inside the pickled filesystem.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({k: s3.env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    done = subprocess.run(
        [sys.executable, "-c", _WORKER], check=False, input=payload, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "s3"
    assert storage.read_text(storage.join(location, "from_worker.txt")) == "written by a fresh process"


def test_storage_env_forwards_only_storage_variables():
    environ = {"AWS_ENDPOINT_URL": "http://h:9000", "AWS_ACCESS_KEY_ID": "k", "AWS_REGION": "", "HOME": "/h"}
    assert storage.storage_env(environ) == {"AWS_ENDPOINT_URL": "http://h:9000", "AWS_ACCESS_KEY_ID": "k"}
