"""Lakes on object storage (`s3://bucket/path`): settings, checks and a lock that works there.

Settings come from the standard AWS environment variables, read by both Lance (its object
store, https://lancedb.github.io/lance/guide/object_store) and boto3 (the lock below):
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
`AWS_ENDPOINT_URL` (an S3-compatible server) and `AWS_ALLOW_HTTP=true` (plain http, for a local
server). spo passes nothing else, so every Lance call of every module sees the same store.

Keyed writes (`Lake.insert_new`, `Lake.update_rows`) and table creation need a lock held across
a read and a commit. On a local lake that is `flock` on `<lake>/.<name>.lock`; on S3 it is a
lease object at the same key, created with a conditional PUT (`If-None-Match: *`, one creator
wins), renewed by its holder (`If-Match` on its own ETag) and deleted on release. A holder that
died stops renewing; its lease expires `lease_s` after the object was last written, judged by
the server's clock (`Last-Modified` against the response's `Date`), so hosts' clocks need not
agree, and a waiter takes it over with an `If-Match` PUT (one taker wins). Lance's own commits
on S3 are safe for concurrent appends without it: Lance writes each manifest with
`If-None-Match: *` (observed, lance 14.0.2) and retries on conflict.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import fcntl
import functools
import getpass
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError

LEASE_S = float(os.environ.get("SPO_LAKE_LOCK_LEASE_S", "30"))
"""How long an S3 lock outlives its holder's last renewal (renewed every third of it)."""
WAIT_S = 900.0
"""How long `lake_lock` waits for a lock held by a live writer before refusing."""
TRUTHY = {"1", "true", "yes", "on"}


def is_remote(uri: str) -> bool:
    """Whether the lake URI names an object store (has a scheme) rather than a local path."""
    return "://" in uri


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> `("bucket", "some/key")`."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def check_remote_lake(uri: str) -> None:
    """Refuse, in one line, a lake URI spo cannot use safely, before Lance sees it.

    Only `s3://` is supported among object stores (keyed writes need the lease lock above,
    written for S3's conditional PUT); a plain-http endpoint needs `AWS_ALLOW_HTTP=true`; the
    bucket must exist and be reachable with the environment's credentials. Raises SpoError.
    """
    scheme = uri.split("://", 1)[0].lower()
    if scheme != "s3":
        raise SpoError(
            f"lake {uri}: {scheme}:// is not supported; use a local path or s3://bucket/path "
            "(docs/lake.md, 'Object storage')"
        )
    bucket, _ = split_s3(uri)
    if not bucket:
        raise SpoError(f"lake {uri}: no bucket in the URI; expected s3://bucket/path")
    endpoint = _endpoint()
    allow = os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in TRUTHY
    if endpoint and endpoint.lower().startswith("http://") and not allow:
        raise SpoError(
            f"lake {uri}: AWS_ENDPOINT_URL {endpoint} is plain http; set AWS_ALLOW_HTTP=true "
            "to use it (a local test server) or give an https endpoint"
        )
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:  # botocore raises several unrelated classes: name them all
        raise SpoError(f"lake {uri}: cannot reach bucket {bucket!r} ({_describe(exc)})") from None


def folder_entries(uri: str) -> list[str]:
    """The names directly under a lake root, sorted: a local folder's entries, or on S3 the
    next path component of every key under `uri/` (one listing per 1000 keys). A root that
    does not exist has none. Raises SpoError when the store cannot be listed."""
    if not is_remote(uri):
        root = Path(uri)
        try:
            return sorted(os.listdir(root)) if root.is_dir() else []
        except OSError as exc:  # no permission to list it
            raise SpoError(f"lake {uri}: cannot list the folder ({exc.strerror})") from None
    bucket, key = split_s3(uri)
    prefix = f"{key}/" if key else ""
    names: set[str] = set()
    try:
        pages = s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.update(
                c["Prefix"][len(prefix) :].rstrip("/") for c in page.get("CommonPrefixes", [])
            )
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
    except Exception as exc:  # botocore raises several unrelated classes: name them all
        raise SpoError(f"lake {uri}: cannot list it ({_describe(exc)})") from None
    return sorted(n for n in names if n)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (endpoint, region, credentials);
    one per distinct setting in a process (clients are thread-safe and slow to build)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    return _client(_endpoint(), region, tuple(os.environ.get(k) for k in keys))


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str, _creds: tuple[str | None, ...]) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - boto3 is a dependency
        raise SpoError("s3:// lakes need boto3 (pip install boto3)") from None
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint, config=config)


def _describe(exc: BaseException) -> str:
    """One line for a botocore/network error: its S3 code and message when it has them."""
    err = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    if err:
        return f"{err.get('Code', '?')}: {err.get('Message', '') or type(exc).__name__}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# S3 answers a lost conditional write with 412 PreconditionFailed, or 409
# ConditionalRequestConflict while a competing conditional write is in flight; a renewal or
# take-over of an object deleted meanwhile gets NoSuchKey.
LOST = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409"}


class S3Lease:
    """An exclusive lease on the S3 object `uri` (see the module docstring).

    Use as a context manager; `check()` raises SpoError when the lease was lost (the holder
    stalled past `lease_s` and another writer took it over), so a caller can refuse to commit.
    """

    def __init__(self, uri: str, *, lease_s: float | None = None, wait_s: float = WAIT_S) -> None:
        self.uri = uri
        self.bucket, self.key = split_s3(uri)
        self.lease_s = float(lease_s if lease_s is not None else LEASE_S)
        self.wait_s = wait_s
        self.owner = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None
        self._client = s3_client()
        self._etag: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": f"{getpass.getuser()}@{socket.gethostname()}",
                "pid": os.getpid(),
                "lease_s": self.lease_s,
                "written_at": dt.datetime.now(dt.UTC).isoformat(),
            }
        ).encode()

    def _put(self, **cond: str) -> str:
        resp = self._client.put_object(
            Bucket=self.bucket,
            Key=self.key,
            Body=self._body(),
            ContentType="application/json",
            **cond,
        )
        return resp["ETag"]

    def acquire(self) -> None:
        """Take the lease, waiting while a live holder renews it (up to `wait_s`)."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        while True:
            try:
                self._etag = self._put(IfNoneMatch="*")
                break
            except Exception as exc:
                if _code(exc) not in LOST:
                    raise SpoError(f"lake lock {self.uri}: {_describe(exc)}") from None
            holder = self._holder()
            if holder is None:
                continue  # released between our PUT and GET: try again at once
            if holder["expired"]:
                try:
                    self._etag = self._put(IfMatch=holder["etag"])
                    self.took_over = holder
                    break
                except Exception as exc:
                    if _code(exc) not in LOST:
                        raise SpoError(f"lake lock {self.uri}: {_describe(exc)}") from None
                    continue  # another waiter took it over first
            if time.monotonic() > deadline:
                who = holder.get("host", "?"), holder.get("pid", "?")
                raise SpoError(
                    f"lake lock {self.uri} is held by {who[0]} pid {who[1]} (renewed "
                    f"{holder['age_s']:.0f} s ago); waited {self.wait_s:.0f} s"
                )
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.5)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="spo-lake-lock", daemon=True)
        self._thread.start()

    def _holder(self) -> dict[str, Any] | None:
        """The current lease: its body, ETag, age and whether it expired (server clock)."""
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise SpoError(f"lake lock {self.uri}: {_describe(exc)}") from None
        try:
            body = json.loads(resp["Body"].read())
        except ValueError:
            body = {}
        date = resp["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = email.utils.parsedate_to_datetime(date) if date else dt.datetime.now(dt.UTC)
        age = (now - resp["LastModified"]).total_seconds()
        lease = float(body.get("lease_s", self.lease_s)) if isinstance(body, dict) else 0.0
        # Last-Modified and Date have whole seconds: one more second before calling it dead.
        return {**body, "etag": resp["ETag"], "age_s": age, "expired": age > lease + 1.0}

    def _renew(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.lease_s / 3):
            with self._mutex:
                if self._etag is None:
                    return
                try:
                    self._etag = self._put(IfMatch=self._etag)
                    last_ok = time.monotonic()
                except Exception as exc:
                    if _code(exc) in LOST or time.monotonic() - last_ok > self.lease_s:
                        self._lost = True
                        return
                    # a transient error: the next tick retries while the lease still runs

    def check(self) -> None:
        """Renew the lease now, or raise SpoError when it is no longer ours: call it right
        before a commit that the lock protects (after a stall, the renewal thread may not have
        noticed yet). What remains is a commit starting more than a whole lease after this."""
        with self._mutex:
            if not self._lost and self._etag is not None:
                try:
                    self._etag = self._put(IfMatch=self._etag)
                except Exception as exc:
                    if _code(exc) not in LOST:
                        raise SpoError(f"lake lock {self.uri}: {_describe(exc)}") from None
                    self._lost = True
        if self._lost:
            raise SpoError(
                f"lake lock {self.uri} was lost (this process stalled longer than its "
                f"{self.lease_s:.0f} s lease and another writer took it); nothing was committed"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease object if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            etag, self._etag = self._etag, None
        if etag is None or self._lost:
            return
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except Exception as exc:
            if _code(exc) in LOST:
                return  # taken over after we stalled: it is someone else's now
            if _code(exc) != "NotImplemented":
                raise SpoError(f"lake lock {self.uri}: release failed ({_describe(exc)})") from None
            # a store without conditional DELETE: delete only if the object is still ours
            head = self._client.head_object(Bucket=self.bucket, Key=self.key)
            if head["ETag"] == etag:
                self._client.delete_object(Bucket=self.bucket, Key=self.key)

    def __enter__(self) -> S3Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _FileLock:
    """`flock` on a local lock file (released when the file closes, even on kill -9)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self) -> None:
        """A local lock cannot be lost while its process lives."""

    @contextlib.contextmanager
    def held(self) -> Iterator[_FileLock]:
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def lake_lock(root: str, name: str) -> Iterator[Any]:
    """Hold the lake's lock `name` (`create`, a table name, `migrate`): `<root>/.<name>.lock`,
    a file under `flock` on a local lake, an `S3Lease` on S3. Yields an object whose `check()`
    raises SpoError when the lock was lost (S3 only). Raises SpoError for another scheme."""
    if not is_remote(root):
        with _FileLock(Path(root) / f".{name}.lock").held() as lock:
            yield lock
        return
    if root.split("://", 1)[0].lower() != "s3":
        raise SpoError(f"lake {root}: locks exist only for local and s3:// lakes")
    with S3Lease(f"{root}/.{name}.lock") as lease:
        yield lease
