"""Run and sweep folders on a local path or on shared storage given as a URI.

A location is either a local path (``runs/x``, ``~/runs/x``, ``/abs/x``) or a URI that
``pyarrow.fs`` knows (``s3://bucket/prefix``, ``gs://...``, ``file:///abs/path``, ``hdfs://...``,
``abfs://...``), with the query parameters ``pyarrow.fs.FileSystem.from_uri`` accepts
(``s3://b/p?region=eu-west-1&endpoint_override=host:9000&scheme=http``). This is the only module
that talks to ``pyarrow.fs``; everything else passes location strings around.

S3-compatible servers (MinIO, Ceph, moto): set ``AWS_ENDPOINT_URL`` (or the S3-only
``AWS_ENDPOINT_URL_S3``) to the server's URL, e.g. ``http://10.0.0.5:9000``, plus
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_DEFAULT_REGION`` if the server
cares). pyarrow >= 15 reads both endpoint variables in ``FileSystem.from_uri`` (Arrow GH-36770,
GH-38663), which is what ``resolve`` calls; note that a bare ``pyarrow.fs.S3FileSystem()`` does
*not* read them (Arrow GH-49643), so never build one directly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pyarrow
import pyarrow.fs as pafs

__all__ = [
    "StorageError",
    "StorageNotFoundError",
    "delete_dir",
    "delete_file",
    "download_dir",
    "exists",
    "is_dir",
    "is_file",
    "is_uri",
    "join",
    "list_dirs",
    "list_files",
    "local_copy",
    "make_dirs",
    "parent",
    "ray_storage",
    "read_bytes",
    "read_text",
    "resolve",
    "storage_env",
    "upload_dir",
    "write_bytes",
    "write_text",
]

# RFC 3986 scheme followed by "://". Requiring the slashes keeps Windows drive letters
# ("C:\\runs") and odd local names containing a colon ("runs/a:b") local.
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

# Object stores have no real directories: a key's "parents" exist as soon as the key does, so
# writing a file needs no create_dir first (which would cost a request and leave marker objects).
_OBJECT_STORES = frozenset({"s3", "gcs"})

# Checkpoints are large files; pyarrow's 1 MiB default chunk makes many small requests. Ray
# uses the same value for its checkpoint uploads.
_COPY_CHUNK_BYTES = 64 * 1024 * 1024

# The environment a process needs to reach the storage the way this one does. Ray workers on
# other nodes do not inherit the driver's environment, so the driver forwards these (runtime_env
# env_vars, or the `ray start` environment).
_STORAGE_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_CA_BUNDLE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
)


class StorageError(ValueError):
    """A location could not be opened, read or written; the message names the location."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The location (file or folder) does not exist. Also a FileNotFoundError, so callers that
    already handle missing local files keep working."""


# ----------------------------------------------------------------------------- locations


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` locations; plain, relative and ``~`` paths are local."""
    return bool(_URI_RE.match(os.fspath(location)))


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path on it (a URI loses its scheme and query,
    which live in the filesystem; a local path becomes absolute)."""
    location = os.fspath(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        split = urlsplit(location)
        if split.scheme == "s3":
            # from_uri asks AWS for the bucket's region on every call (a HeadBucket, even with
            # AWS_DEFAULT_REGION set; skipped when an endpoint is given), so S3 filesystems are
            # built once per bucket and options. The path is what from_uri would return.
            root = urlunsplit((split.scheme, split.netloc, "", split.query, ""))
            filesystem = _s3_filesystem(root, tuple(sorted(storage_env().items())))
            path = split.netloc.rpartition("@")[2] + unquote(split.path)
        else:
            filesystem, path = pafs.FileSystem.from_uri(location)
    except (pyarrow.ArrowException, OSError) as err:
        message = _one_line(err)
        if "Unrecognized filesystem type" in message:
            scheme = location.split("://", 1)[0]
            raise StorageError(
                f"cannot open {location}: pyarrow does not know the scheme {scheme!r} "
                "(use a local path, or s3://, gs://, file:///, hdfs://, abfs://)"
            ) from None
        raise StorageError(f"cannot open {location}: {message}") from None
    # Without the trailing slash, for joining onto; the local root "/" stays "/".
    return filesystem, path.rstrip("/") or path


@functools.lru_cache(maxsize=64)
def _s3_filesystem(root_uri: str, env: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    """The filesystem for ``s3://bucket?query``. ``env`` (endpoint, credentials, region) is only
    part of the cache key: after it changes, a new filesystem is built."""
    return pafs.FileSystem.from_uri(root_uri)[0]


def join(location: str | os.PathLike[str], *parts: str) -> str:
    """``location`` with ``parts`` appended: URIs stay URIs (query kept at the end), local paths
    stay local paths (not made absolute). Parts are plain relative names (``a/b.txt``, as
    ``list_files`` returns them); leading and trailing slashes are dropped."""
    location = os.fspath(location)
    parts = tuple(p.strip("/") for p in parts if p.strip("/"))
    if not parts:
        return location
    if not is_uri(location):
        return os.path.join(location, *parts)
    split = urlsplit(location)
    # pyarrow parses URIs strictly: a space or non-ASCII letter is a syntax error and "#" or "?"
    # would cut the path, so names are percent-encoded (from_uri decodes them back). RFC 3986's
    # sub-delimiters stay as they are, keeping Tune trial names ("lr=0.1,seed=2") readable.
    encoded = (quote(part, safe="/!$&'()*+,;=:@") for part in parts)
    path = posixpath.join(split.path or "/", *encoded)
    return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))


def parent(location: str | os.PathLike[str]) -> str:
    """The folder holding ``location`` (a URI keeps its scheme and query)."""
    location = os.fspath(location)
    if not is_uri(location):
        return os.path.dirname(os.path.abspath(os.path.expanduser(location)))
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc, posixpath.dirname(split.path.rstrip("/")), split.query, split.fragment))


# ----------------------------------------------------------------------------- files


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to the file at ``location`` (replacing it), creating its folder if needed."""
    filesystem, path = resolve(location)
    with _errors(location, "write"):
        if filesystem.type_name not in _OBJECT_STORES:
            filesystem.create_dir(posixpath.dirname(path) or "/", recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)


def write_text(location: str | os.PathLike[str], text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    filesystem, path = resolve(location)
    with _errors(location, "read"), filesystem.open_input_stream(path) as stream:
        return stream.read()


def read_text(location: str | os.PathLike[str]) -> str:
    return read_bytes(location).decode("utf-8")


def exists(location: str | os.PathLike[str]) -> bool:
    return _file_type(location) != pafs.FileType.NotFound


def is_dir(location: str | os.PathLike[str]) -> bool:
    return _file_type(location) == pafs.FileType.Directory


def is_file(location: str | os.PathLike[str]) -> bool:
    return _file_type(location) == pafs.FileType.File


def list_files(location: str | os.PathLike[str], recursive: bool = False) -> list[str]:
    """Sorted names of the files under the folder ``location``, relative to it, with ``/``
    separators (``a.txt``, ``sub/b.txt`` when recursive). Folders themselves are not listed."""
    return _list(location, recursive, pafs.FileType.File)


def list_dirs(location: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the folders directly inside the folder ``location`` (e.g. a sweep's trials)."""
    return _list(location, False, pafs.FileType.Directory)


def make_dirs(location: str | os.PathLike[str]) -> None:
    """Create the folder ``location`` and its parents; fine if it exists. On S3 this also checks
    that the bucket exists and is reachable, so it is the cheap way to fail early."""
    filesystem, path = resolve(location)
    with _errors(location, "create the folder"):
        filesystem.create_dir(path, recursive=True)


def delete_file(location: str | os.PathLike[str]) -> None:
    """Delete the file ``location``; nothing happens if it is missing."""
    filesystem, path = resolve(location)
    with _errors(location, "delete"):
        if _info(filesystem, path, location).type == pafs.FileType.File:
            filesystem.delete_file(path)


def delete_dir(location: str | os.PathLike[str]) -> None:
    """Delete the folder ``location`` and everything in it; nothing happens if it is missing."""
    filesystem, path = resolve(location)
    with _errors(location, "delete"):
        if _info(filesystem, path, location).type != pafs.FileType.NotFound:
            filesystem.delete_dir(path)


# ----------------------------------------------------------------------------- trees


def upload_dir(local_dir: str | os.PathLike[str], location: str | os.PathLike[str]) -> None:
    """Copy the local folder ``local_dir`` into ``location`` (file for file; files already at
    ``location`` that ``local_dir`` lacks are kept)."""
    source = os.path.abspath(os.path.expanduser(os.fspath(local_dir)))
    if not os.path.isdir(source):
        raise StorageNotFoundError(f"cannot upload {source}: no such local folder")
    filesystem, path = resolve(location)
    with _errors(location, "upload to"):
        pafs.copy_files(
            source,
            path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=filesystem,
            # Threaded uploads to S3 can deadlock (Arrow GH-32372); Ray's own checkpoint upload
            # turns them off for the same reason. Downloads are safe threaded.
            use_threads=filesystem.type_name != "s3",
            chunk_size=_COPY_CHUNK_BYTES,
        )


def download_dir(location: str | os.PathLike[str], local_dir: str | os.PathLike[str]) -> None:
    """Copy the folder ``location`` into the local folder ``local_dir`` (created if needed)."""
    filesystem, path = resolve(location)
    if _info(filesystem, path, location).type != pafs.FileType.Directory:
        raise StorageNotFoundError(f"cannot download {location}: no such folder")
    destination = os.path.abspath(os.path.expanduser(os.fspath(local_dir)))
    os.makedirs(destination, exist_ok=True)
    with _errors(location, "download"):
        pafs.copy_files(
            path,
            destination,
            source_filesystem=filesystem,
            destination_filesystem=pafs.LocalFileSystem(),
            chunk_size=_COPY_CHUNK_BYTES,
        )


@contextlib.contextmanager
def local_copy(location: str | os.PathLike[str], only: tuple[str, ...] | None = None) -> Iterator[Path]:
    """A local folder with the contents of the folder ``location``, for code that reads with
    plain file APIs (compare, report, resume). A local location (path or ``file://``) is yielded
    as is, unchanged and not copied; a remote one is downloaded to a temporary folder that is
    removed afterwards, so writes into it are lost. ``only``: the top-level names to fetch
    (files or folders; missing ones are skipped), so a run's checkpoints stay where they are."""
    filesystem, path = resolve(location)
    if isinstance(filesystem, pafs.LocalFileSystem):
        if not os.path.isdir(path):
            raise StorageNotFoundError(f"cannot read {location}: no such folder")
        yield Path(path)
        return
    scratch = tempfile.mkdtemp(prefix="mentor-ray-copy-")
    try:
        if only is None:
            download_dir(location, scratch)
        else:
            if not is_dir(location):
                raise StorageNotFoundError(f"cannot read {location}: no such folder")
            for name in only:
                kind = _file_type(join(location, name))
                if kind == pafs.FileType.Directory:
                    download_dir(join(location, name), os.path.join(scratch, name))
                elif kind == pafs.FileType.File:
                    Path(scratch, name).parent.mkdir(parents=True, exist_ok=True)
                    Path(scratch, name).write_bytes(read_bytes(join(location, name)))
        yield Path(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ----------------------------------------------------------------------------- Ray


def ray_storage(location: str | os.PathLike[str]) -> dict[str, object]:
    """Keyword arguments for Ray Train's / Ray Tune's ``RunConfig`` (and ``Tuner.restore``) that
    put results and checkpoints at ``location``. Creates the folder, so a missing bucket or an
    unreachable server fails here, with a clear message, rather than inside Ray.

    Ray 2.60 resolves a bare ``storage_path`` with ``pyarrow.fs.FileSystem.from_uri`` on the
    driver (``ray/train/v2/_internal/execution/storage.py::get_fs_and_path``) and ships the
    resulting filesystem, pickled, to the controller and workers. Given ``storage_filesystem`` it
    instead expects ``storage_path`` stripped of its scheme (``bucket/prefix``). We always pass the
    filesystem for URIs so Ray uses exactly the one ``resolve`` built: same endpoint, same query
    options. A pickled S3 filesystem carries its endpoint (``endpoint_override``) and the URI's
    options, but not credentials taken from the environment: processes on other nodes read those from
    their own environment, which is what ``storage_env`` is for. Consequence for readers: Ray's
    ``Result.path`` / ``Checkpoint.path`` are then paths on that filesystem (``bucket/prefix/...``),
    not URIs.
    """
    make_dirs(location)
    filesystem, path = resolve(location)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return {"storage_path": path}
    return {"storage_path": path, "storage_filesystem": filesystem}


def storage_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The storage-related variables (endpoint, credentials, region) set in ``environ``
    (default: this process), to forward to Ray workers via ``runtime_env={"env_vars": ...}`` or
    to ``ray start`` on other nodes."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in _STORAGE_ENV_VARS if environ.get(key)}


# ----------------------------------------------------------------------------- internals


def _file_type(location: str | os.PathLike[str]) -> pafs.FileType:
    filesystem, path = resolve(location)
    return _info(filesystem, path, location).type


def _info(filesystem: pafs.FileSystem, path: str, location: str | os.PathLike[str]) -> pafs.FileInfo:
    with _errors(location, "look at"):
        return filesystem.get_file_info(path)


def _list(location: str | os.PathLike[str], recursive: bool, kind: pafs.FileType) -> list[str]:
    filesystem, path = resolve(location)
    if _info(filesystem, path, location).type != pafs.FileType.Directory:
        raise StorageNotFoundError(f"cannot list {location}: no such folder")
    with _errors(location, "list"):
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive))
    prefix = path.rstrip("/") + "/"
    return sorted(info.path[len(prefix):] for info in infos if info.type == kind)


@contextlib.contextmanager
def _errors(location: str | os.PathLike[str], action: str) -> Iterator[None]:
    """Turn pyarrow's errors into a StorageError naming the location, without pyarrow's
    traceback: users need the location and the likely cause, not Arrow's C++ call path."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageNotFoundError(f"cannot {action} {os.fspath(location)}: no such file or folder") from None
    except (pyarrow.ArrowException, OSError) as err:
        raise StorageError(f"cannot {action} {os.fspath(location)}: {_explain(err)}") from None


def _explain(err: BaseException) -> str:
    """pyarrow's message, prefixed with the likely cause for the AWS errors people actually hit."""
    message = _one_line(err)
    hints = {
        "NO_SUCH_BUCKET": "the bucket does not exist",
        "not found. To create buckets": "the bucket does not exist",
        "NETWORK_CONNECTION": "cannot reach the storage server (check AWS_ENDPOINT_URL and the network)",
        "ACCESS_DENIED": "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
        "INVALID_ACCESS_KEY_ID": "unknown access key (check AWS_ACCESS_KEY_ID)",
        "SIGNATURE_DOES_NOT_MATCH": "wrong secret key (check AWS_SECRET_ACCESS_KEY)",
    }
    for marker, hint in hints.items():
        if marker in message:
            return f"{hint} [{message}]"
    return message


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
