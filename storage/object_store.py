"""A bucket of job files beside the data directory: put, get, list and delete by key (STORAGE_URL).

Keys are the files' paths under the data directory ("jobs/12/work/checkpoint.pt"), so a host without the job's
folder makes it again by downloading them. Built on obstore (one Rust wheel, no boto stack; sync calls for the
worker's threads): `s3://bucket/prefix` for AWS, MinIO, R2 or Ceph, `file:///folder` for a shared mount and the
tests. Secrets are handed to obstore and kept nowhere else: no message or repr here shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from storage.settings import Settings


class ObjectStoreError(Exception):
    """The bucket cannot be read or written; the message names the bucket, never a credential."""


class ObjectStore:
    """One bucket (or folder) under an optional prefix; every method is blocking (call it off the event loop)."""

    def __init__(self, store, where: str):
        self._store = store  # an obstore store
        self.where = where  # for messages: the URL and endpoint, no credentials

    def __repr__(self) -> str:
        return f"ObjectStore({self.where})"

    def put_file(self, key: str, path: Path) -> None:
        """Upload `path` under `key`, replacing what was there (large files go up in parts)."""
        import obstore

        with self._errors("uploading", key):
            obstore.put(self._store, key, Path(path))

    def get_file(self, key: str, path: Path) -> bool:
        """Download `key` to `path` (written beside it, then renamed); False when there is no such object."""
        import obstore

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".download")
        try:
            with self._errors("downloading", key, absent_is_fine=True):
                result = obstore.get(self._store, key)
                with tmp.open("wb") as sink:
                    for chunk in result.stream():
                        sink.write(chunk)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
        return True

    def list(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object whose key starts with `prefix`."""
        import obstore

        with self._errors("listing", prefix):
            return {meta["path"]: meta["size"] for batch in obstore.list(self._store, prefix) for meta in batch}

    def delete(self, keys: list[str]) -> None:
        import obstore

        if keys:
            with self._errors("deleting", keys[0]):
                obstore.delete(self._store, keys)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many there were."""
        keys = list(self.list(prefix))
        self.delete(keys)
        return len(keys)

    def _errors(self, doing: str, key: str, absent_is_fine: bool = False):
        return _Translated(f"{doing} {key} in {self.where}", absent_is_fine)


class _Translated:
    """obstore's errors as ObjectStoreError with our own text (obstore's never hold a secret, but its request
    dumps are long). A missing object stays FileNotFoundError where that is an answer (a get); elsewhere it is
    a missing bucket."""

    def __init__(self, what: str, absent_is_fine: bool):
        self.what, self.absent_is_fine = what, absent_is_fine

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, FileNotFoundError) and self.absent_is_fine:
            return False
        if isinstance(error, OSError) and error.errno is not None:
            return False  # our own disk (a full one, say), not the bucket: obstore's errors carry no errno
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise ObjectStoreError(f"{self.what} failed: {reason}") from None


def open_object_store(settings: Settings) -> ObjectStore | None:
    """The bucket STORAGE_URL names, or None when job files live in the data directory alone."""
    url = settings.storage_url
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        from obstore.store import LocalStore

        folder = Path(parts.path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = error.strerror or error
            raise ObjectStoreError(f"STORAGE_URL {url}: the folder cannot be made ({reason})") from None
        return ObjectStore(LocalStore(folder), url)
    from obstore.store import S3Store

    options = {}
    if settings.storage_access_key_id:
        options["access_key_id"] = settings.storage_access_key_id
    if settings.storage_secret_access_key:
        options["secret_access_key"] = settings.storage_secret_access_key
    if settings.storage_region:
        options["region"] = settings.storage_region
    endpoint = settings.storage_endpoint_url
    if endpoint:
        options["endpoint"] = endpoint
        options["virtual_hosted_style_request"] = False  # MinIO and Ceph answer on one host, bucket in the path
    client = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
    where = url + (f" at {endpoint}" if endpoint else "")
    try:
        store = S3Store(parts.netloc, prefix=parts.path.strip("/") or None, client_options=client, **options)
    except Exception as error:  # a bad setting: obstore says which, without the values of the secrets
        raise ObjectStoreError(f"STORAGE_URL {where}: {str(error).splitlines()[0][:300]}") from None
    return ObjectStore(store, where)
