"""Signed run outputs: what the host believes of the files a run leaves behind.

A run's outputs are data until proven otherwise: they come back from a
container, an S3 prefix or a directory that others can write to. The host
signs each run the way Jupyter signs messages:

* at submit the host makes a key for the run (:func:`new_key`), keeps it in
  the ledger, and hands it to the run only at run time, in the environment
  variable ``NBCONTAINER_RUN_KEY`` (never in an image, a label or a log);
* the runner pops the key from its environment before the cell runs and, at
  the end, writes ``model/results.json``: the results index, the SHA-256 of
  every file it left under ``model/`` and ``output/``, and an HMAC-SHA256
  over that manifest (:func:`seal`);
* the host checks the HMAC before it reads the manifest, and the digest of
  each file as it reads the file (:class:`RunOutputs`); a pickle is loaded
  only from a run whose signature holds.

What the signature proves: the files are the ones the run wrote, unchanged
since (in S3, on disk, in transit), and no file was added, renamed or
removed. It does not make the run's own code benign: code in the run can
read the key from its process environment, so a run that is itself hostile
can sign what it likes. Trust the image you run.

This module is imported inside run images: standard library only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import mmap
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import SerializationError, UntrustedResults
from .serialize import map_file

__all__ = [
    "KEY_ENV",
    "MANIFEST",
    "TRUST_MODES",
    "new_key",
    "seal",
    "sign",
    "RunOutputs",
    "Verdict",
    "plain_name",
    "prune_special_files",
]

KEY_ENV = "NBCONTAINER_RUN_KEY"


class Verdict(str, enum.Enum):
    """How far a run's collected outputs are believed (a ledger column of its own)."""

    SIGNED = "signed"  # the signature holds over every file
    NOT_CHECKED = "not checked"  # trust 'always': read as they are
    REFUSED = "refused"  # a file or the signature is not what the run wrote


MANIFEST = "results.json"  # under model/
SIGNED_DIRS = ("model", "output")
SCHEME = "hmac-sha256"
FORMAT = 2
#: signed: pickles only from a run whose signature holds (default); always: no
#: signature needed (runs made before signing); never: no pickles at all.
TRUST_MODES = ("signed", "always", "never")
# What the runner writes into a results index; anything else (e.g. "import") is refused.
RESULT_SERIALIZERS = frozenset({"arrow", "parquet", "json", "cloudpickle"})
_CHUNK = 1 << 20


def new_key() -> str:
    """A fresh per-run signing key (hex, 256 bits)."""
    return secrets.token_hex(32)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(doc: dict[str, Any], key: str) -> str:
    """The HMAC of a manifest (without its "signature" member)."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return hmac.new(key.encode(), _canonical(body), hashlib.sha256).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def prune_special_files(ml_root: Path) -> list[str]:
    """Remove links, FIFOs, sockets and devices under model/ and output/ (the runner
    calls this before sealing: only regular files and directories travel)."""
    removed = []
    for sub in SIGNED_DIRS:
        base = ml_root / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*"), reverse=True):
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                path.unlink()
                removed.append(path.relative_to(ml_root).as_posix())
    return removed


def seal(ml_root: Path, key: str | None, index: dict[str, Any]) -> dict[str, Any]:
    """Write model/results.json: `index`, every output file's SHA-256, and the signature.

    Without a key (an image started by hand) the manifest is written unsigned.
    """
    ml_root = Path(ml_root)
    (ml_root / "model").mkdir(parents=True, exist_ok=True)
    files = {}
    for sub in SIGNED_DIRS:
        base = ml_root / sub
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                rel = path.relative_to(ml_root).as_posix()
                if path.is_file() and not path.is_symlink() and rel != f"model/{MANIFEST}":
                    files[rel] = _sha256(path)
    # Round-trip through JSON first, so the host signs over exactly what it reads.
    doc: dict[str, Any] = json.loads(
        json.dumps({**index, "format": FORMAT, "files": files}, default=str)
    )
    doc["signature"] = {"scheme": SCHEME, "value": sign(doc, key)} if key else None
    tmp = ml_root / "model" / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, ml_root / "model" / MANIFEST)
    return doc


def plain_name(name: object) -> bool:
    """A plain file name: no directory part, no traversal, nothing odd."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
    )


def _plain_relpath(rel: object) -> bool:
    if not isinstance(rel, str) or "\\" in rel or "\x00" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return (
        len(parts) >= 2
        and parts[0] in SIGNED_DIRS
        and not rel.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
    )


class RunOutputs:
    """A run's output directory (``model/``, ``output/``) as the host may read it.

    Every read goes through here: the manifest's signature is checked first
    (unless trust is 'always'), then each file's digest as it is read.
    Refusals raise :class:`UntrustedResults` naming the file and the reason.
    """

    def __init__(
        self, root: Path, key: str | None, trust: str = "signed", *, lenient: bool = False
    ) -> None:
        """lenient: the view of a refused run's data on request: names and serializers are
        still checked, signature, listing and digests are not, and pickles are never read."""
        if trust not in TRUST_MODES:
            raise ValueError(f"trust must be one of {', '.join(TRUST_MODES)}, not {trust!r}")
        self.root = Path(root)
        self.key = key
        self.trust = "always" if lenient else trust
        self.lenient = lenient
        self._manifest: dict[str, Any] | None = None
        self._refusal: UntrustedResults | None = None
        self._all_verified = False

    # ------------------------------------------------------------ manifest
    def _refuse(self, file: str, reason: str) -> UntrustedResults:
        return UntrustedResults(str(self.root), file, reason)

    def manifest(self) -> dict[str, Any]:
        """The results index, once its signature and structure hold (cached)."""
        if self._refusal is not None:
            raise self._refusal
        if self._manifest is None:
            try:
                self._manifest = self._load_manifest()
            except UntrustedResults as exc:
                self._refusal = exc
                raise
        return self._manifest

    @property
    def allows_pickles(self) -> bool:
        """Whether pickles may be loaded: the manifest holds and trust is not 'never'."""
        if self.trust == "never" or self.lenient:
            return False
        try:
            self.manifest()
        except UntrustedResults:
            return False
        return True

    def _signature_ok(self, doc: dict[str, Any]) -> bool:
        sig = doc.get("signature")
        return (
            bool(self.key)
            and isinstance(sig, dict)
            and sig.get("scheme") == SCHEME
            and isinstance(sig.get("value"), str)
            and hmac.compare_digest(sig["value"], sign(doc, self.key or ""))
        )

    def _load_manifest(self) -> dict[str, Any]:
        """The results manifest, read and checked in order: a JSON object, signed with this
        run's key (unless trust is 'always'), its file list plain and complete, its
        entries ones the runner writes."""
        rel = f"model/{MANIFEST}"
        doc = self._read_manifest(rel)
        if self.trust != "always":
            self._check_signature(doc, rel)
        files = doc.get("files")
        if files is not None:
            self._check_files(files, rel)
        elif self.trust != "always":
            raise self._refuse(rel, "it lists no file digests")
        self._check_entries(doc, rel)
        return doc

    def _read_manifest(self, rel: str) -> dict[str, Any]:
        path = self.root / "model" / MANIFEST
        if not path.is_file() or path.is_symlink():
            raise self._refuse(
                rel,
                "there is no results manifest: the run did not finish, "
                "or its outputs are not a run's",
            )
        try:
            doc = json.loads(path.read_bytes())
        except ValueError as exc:
            raise self._refuse(rel, f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise self._refuse(rel, "not a JSON object")
        return doc

    def _check_signature(self, doc: dict[str, Any], rel: str) -> None:
        if doc.get("signature") is None:
            raise self._refuse(rel, "it is not signed")
        if not self.key:
            raise self._refuse(
                rel, "the ledger holds no key for this run (made before signed results?)"
            )
        if not self._signature_ok(doc):
            raise self._refuse(rel, "its signature does not match this run's key")

    def _check_files(self, files: Any, rel: str) -> None:
        if not isinstance(files, dict):
            raise self._refuse(rel, "'files' is not an object")
        for name, digest in files.items():
            if not _plain_relpath(name):
                raise self._refuse(str(name), "not a plain path under model/ or output/")
            if not isinstance(digest, str) or len(digest) != 64:
                raise self._refuse(name, "no SHA-256 digest")
        if self.lenient:
            return
        # Names only (cheap): nothing added, renamed or removed since the run sealed them.
        present = set(self._present()) - {rel}
        for extra in sorted(present - set(files)):
            raise self._refuse(extra, "present, but not in the signed manifest")
        for missing in sorted(set(files) - present):
            raise self._refuse(missing, "listed in the signed manifest, but missing")

    def _check_entries(self, doc: dict[str, Any], rel: str) -> None:
        """Results entries the runner writes; lenient (data on request): what is not
        plainly data is left out instead."""
        variables = doc.get("variables") or {}
        if not isinstance(variables, dict):
            raise self._refuse(rel, "'variables' is not an object")
        for name, entry in list(variables.items()):
            problem = _entry_problem(entry)
            if problem and self.lenient:
                del variables[name]
            elif problem:
                raise self._refuse(*problem)
        doc["variables"] = variables
        if doc.get("last_value") is not None:
            problem = _entry_problem(doc["last_value"])
            if problem and self.lenient:
                doc["last_value"] = None
            elif problem:
                raise self._refuse(*problem)

    # ----------------------------------------------------------- the files
    def _path(self, rel: str) -> Path:
        if not _plain_relpath(rel):
            raise self._refuse(rel, "not a plain path under model/ or output/")
        path = self.root / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise self._refuse(rel, "listed, but missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(rel, "not a regular file")
        root = self.root.resolve()
        if root not in path.resolve().parents:
            raise self._refuse(rel, "outside the run's directory")
        return path

    def _expected_digest(self, rel: str) -> str | None:
        files = self.manifest().get("files")
        if (
            files is None or self.lenient
        ):  # from before signing (trust 'always'), or data on request
            return None
        if rel not in files:
            raise self._refuse(rel, "not listed in the signed manifest")
        return str(files[rel])

    def exists(self, rel: str) -> bool:
        files = self.manifest().get("files")
        return rel in files if files is not None else (self.root / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        """A file's bytes, once its digest matches the manifest."""
        expected = self._expected_digest(rel)
        data = self._path(rel).read_bytes()
        if expected is not None and not hmac.compare_digest(
            hashlib.sha256(data).hexdigest(), expected
        ):
            raise self._refuse(rel, "its content differs from the signed digest")
        return data

    def read_mapped(self, rel: str) -> bytearray | mmap.mmap:
        """A file memory-mapped copy-on-write (see serialize.map_file), once the digest of
        what is mapped matches the manifest: the check reads it once, through the map, and
        nothing is copied. For inert bytes only (arrays' buffers): what is executed or
        unpickled is read into memory with read_bytes."""
        expected = self._expected_digest(rel)
        mapped = map_file(self._path(rel))
        if expected is not None:
            with memoryview(mapped) as view:
                digest = hashlib.sha256(view).hexdigest()
            if not hmac.compare_digest(digest, expected):
                raise self._refuse(rel, "its content differs from the signed digest")
        return mapped

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8", "replace")

    def verify_all(self) -> None:
        """Check every file's digest (the manifest already checked names: nothing unlisted).

        Done once per instance; reads check the digest of what they read all the same.
        """
        files = self.manifest().get("files")
        if files is None or self._all_verified or self.lenient:
            return
        for rel, digest in files.items():
            if not hmac.compare_digest(_sha256(self._path(rel)), digest):
                self._refusal = self._refuse(rel, "its content differs from the signed digest")
                raise self._refusal
        self._all_verified = True

    def _present(self) -> Iterator[str]:
        for sub in SIGNED_DIRS:
            base = self.root / sub
            if base.is_dir():
                for path in sorted(base.rglob("*")):
                    if not path.is_dir() or path.is_symlink():
                        yield path.relative_to(self.root).as_posix()

    def check(self) -> tuple[Verdict, str]:
        """(how far these outputs are believed, that in words for the ledger). Every file
        is verified here once; later reads of this RunOutputs do not hash them again."""
        try:
            self.verify_all()
        except UntrustedResults as exc:
            return Verdict.REFUSED, f"refused: {exc.file}: {exc.reason}"
        if self.trust == "always":
            return Verdict.NOT_CHECKED, "not checked (trust 'always')"
        return Verdict.SIGNED, "signed"

    def verdict(self) -> str:
        """The verdict in words (:meth:`check`)."""
        return self.check()[1]

    def source(self, subdir: str = "model") -> _Source:
        """A FileSource for deserialize: plain names under `subdir`, digests checked."""
        return _Source(self, subdir)


def _entry_problem(entry: Any) -> tuple[str, str] | None:
    """(file, reason) when a results entry is not one the runner writes."""
    rel = f"model/{MANIFEST}"
    if not isinstance(entry, dict):
        return rel, "a results entry is not an object"
    name = entry.get("name", "?")
    serializer = entry.get("serializer")
    if serializer not in RESULT_SERIALIZERS:
        return rel, f"result {name!r} names serializer {serializer!r}, which runs never write"
    files = entry.get("files")
    if not isinstance(files, list) or not files:
        return rel, f"result {name!r} lists no files"
    for f in files:
        if not plain_name(f):
            return str(f), f"result {name!r} names a file that is not a plain file name"
    return None


class _Source:
    def __init__(self, outputs: RunOutputs, subdir: str) -> None:
        self.outputs, self.subdir = outputs, subdir

    def read_bytes(self, name: str) -> bytes:
        if not plain_name(name):
            raise SerializationError(f"{name!r} is not a plain file name")
        return self.outputs.read_bytes(f"{self.subdir}/{name}")

    def read_buffer(self, name: str) -> bytearray | mmap.mmap:
        if not plain_name(name):
            raise SerializationError(f"{name!r} is not a plain file name")
        return self.outputs.read_mapped(f"{self.subdir}/{name}")
