"""Code bundles: pack a working directory into a content-addressed tarball, extract one safely.

The client packs what a run needs (honouring `.gitignore` and `.gridlabignore`) into a
gzip'd tar whose bytes depend only on the tree's names, contents, exec bits and links, so
the same tree always has the same digest and is uploaded and cached once. The agent
extracts bundles that may come from anyone holding a token, so `safe_extract` treats every
archive as hostile: it writes only inside a private temp folder, checks each member before
touching the disk, counts the bytes it actually writes, and renames the folder into place
only when the whole archive passed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PureWindowsPath
from typing import BinaryIO

from pathspec import GitIgnoreSpec

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 1024 * MiB  # content (uncompressed) a bundle may hold, on both ends
DEFAULT_WARN_BYTES = 50 * MiB
DEFAULT_MAX_FILES = 100_000  # members (files, folders, links) an extracted bundle may hold
# A zip bomb is told by its compression ratio: past RATIO_FLOOR decompressed bytes, the stream may be
# at most DEFAULT_MAX_RATIO times the compressed bytes read so far. Source code and data rarely pass 10:1;
# a file of zeros gzips at about 1000:1.
DEFAULT_MAX_RATIO = 100
RATIO_FLOOR = 10 * MiB
IGNORE_FILES = (".gitignore", ".gridlabignore")  # later files win, as later lines do
ALWAYS_SKIPPED = ".git"

_CHUNK = 256 * 1024
# Tar headers (ustar blocks, pax records, long names) a member may bring, beyond its data;
# bounds what tarfile reads into memory before we ever see a member (a header bomb).
_HEADER_ALLOWANCE = 64 * 1024
_READ_SLACK = 4 * MiB


class BundleError(Exception):
    """A bundle cannot be packed or is refused on extraction; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A packed bundle: `path` is named by its digest, so equal trees share one file."""

    path: Path
    digest: str  # "sha256:<hex>" of the .tar.gz bytes
    size: int  # bytes of the .tar.gz (what is uploaded and stored)
    files: int  # regular files and links in it (folders not counted)
    content_bytes: int  # bytes of file data once extracted (what the caps measure)
    warnings: tuple[str, ...] = ()


def digest_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file as "sha256:<hex>", read in chunks so large files cost no memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


# --- pack -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    rel: str  # posix path inside the bundle
    path: str  # where it is on disk
    kind: str  # "dir", "file" or "link"
    size: int = 0
    executable: bool = False
    linkname: str = ""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _make_dir(path: str | os.PathLike[str]) -> None:
    """A folder readable by all, as a checkout would be, whatever the daemon's umask."""
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)  # noqa: S103 - code to run, not secrets


def _human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def _compiles(line: str) -> bool:
    try:
        GitIgnoreSpec.from_lines([line])
    except (ValueError, re.error):
        return False
    return True


def _load_ignores(folder: str, folder_rel: str, warnings: list[str]) -> GitIgnoreSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f.read().splitlines():
                if _compiles(line):
                    lines.append(line)
                else:  # git skips a pattern it cannot read; so do we, but say so
                    where = f"{folder_rel}/{name}" if folder_rel else name
                    warnings.append(f"{where}: skipped the invalid pattern {line!r}")
    return GitIgnoreSpec.from_lines(lines) if lines else None


def _ignored(specs: list[tuple[str, GitIgnoreSpec]], rel: str, is_dir: bool) -> bool:
    """Git's rule: the deepest ignore file with a matching pattern decides, its last match wins."""
    for base, spec in reversed(specs):
        sub = rel[len(base) + 1 :] if base else rel
        result = spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


def _collect(root: Path, warnings: list[str]) -> list[_Entry]:
    """The tree's entries in a fixed order: each folder, then its children sorted by name."""
    real_root = os.path.realpath(root)
    entries: list[_Entry] = []

    def visit(folder: str, folder_rel: str, specs: list[tuple[str, GitIgnoreSpec]]) -> None:
        spec = _load_ignores(folder, folder_rel, warnings)
        if spec is not None:
            specs = [*specs, (folder_rel, spec)]
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            if child.name == ALWAYS_SKIPPED:
                continue
            rel = f"{folder_rel}/{child.name}" if folder_rel else child.name
            st = child.stat(follow_symlinks=False)
            if _ignored(specs, rel, stat.S_ISDIR(st.st_mode)):
                continue
            if stat.S_ISLNK(st.st_mode):
                resolved = os.path.realpath(child.path)
                if not _within(resolved, real_root):
                    raise BundleError(
                        f"symlink {rel} -> {os.readlink(child.path)} points outside {root}; a bundle may only "
                        f"hold links to its own files: copy the target in, or add {rel} to .gridlabignore"
                    )
                # Stored relative to the link's real folder, so it means the same after extraction.
                linkname = os.path.relpath(resolved, os.path.realpath(folder))
                entries.append(_Entry(rel, child.path, "link", linkname=linkname))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(_Entry(rel, child.path, "dir"))
                visit(child.path, rel, specs)
            elif stat.S_ISREG(st.st_mode):
                entries.append(_Entry(rel, child.path, "file", st.st_size, bool(st.st_mode & 0o111)))
            else:
                warnings.append(f"skipped {rel}: not a file, folder or symlink (a socket, FIFO or device)")

    visit(str(root), "", [])
    return entries


def _largest(entries: list[_Entry], n: int = 5) -> str:
    files = sorted((e for e in entries if e.kind == "file"), key=lambda e: (-e.size, e.rel))[:n]
    return ", ".join(f"{e.rel} ({_human(e.size)})" for e in files)


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    """A header that carries nothing about the machine: no times, owners or umask."""
    info = tarfile.TarInfo(entry.rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "link":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.linkname
    else:
        info.type, info.size = tarfile.REGTYPE, entry.size
        info.mode = 0o755 if entry.executable else 0o644
    return info


def _add_file(tar: tarfile.TarFile, entry: _Entry) -> None:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(entry.path, flags)
    except OSError as e:
        raise BundleError(
            f"cannot read {entry.rel}: {e.strerror}; fix its permissions or add it to .gridlabignore"
        ) from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{entry.rel} changed while it was being packed; pack again")
        try:
            tar.addfile(_tarinfo(entry), f)
        except OSError as e:  # tarfile: the file shrank after we measured it
            raise BundleError(f"{entry.rel} changed while it was being packed ({e}); pack again") from e


def pack(
    root: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    warn_bytes: int = DEFAULT_WARN_BYTES,
) -> Bundle:
    """Pack `root` into `dest_dir/<sha256>.tar.gz`; the same tree always gives the same bytes.

    Honours every `.gitignore` and `.gridlabignore` in the tree (git's rules; in one folder
    `.gridlabignore` is read after `.gitignore`, so it can re-include with `!`), skips `.git`,
    and stores symlinks as links (refusing any that leave `root`). The caps measure file
    content, the bytes `safe_extract` will write, so what packs under a cap extracts under it.

    Raises:
        BundleError: the content exceeds `max_bytes`, a link leaves `root`, or a file is unreadable.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise BundleError(f"{root_path} is not a folder; pack the folder that holds your code")
    warnings: list[str] = []
    entries = _collect(root_path, warnings)
    content = sum(e.size for e in entries)
    if content > max_bytes:
        raise BundleError(
            f"{root_path} holds {_human(content)} to bundle, more than the {_human(max_bytes)} cap. "
            f"Largest files: {_largest(entries)}. Exclude data, checkpoints and environments with a "
            f".gridlabignore file in {root_path} (same syntax as .gitignore), or raise the cap."
        )
    if content > warn_bytes:
        warnings.append(
            f"the bundle of {root_path} holds {_human(content)} (over {_human(warn_bytes)}), uploaded with "
            f"every change; largest files: {_largest(entries)}. Exclude what runs do not need with .gridlabignore."
        )

    out_dir = Path(dest_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".partial", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw:
            # filename="" and mtime=0 keep the temp file's name and the clock out of the gzip header.
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for entry in entries:
                    if entry.kind == "file":
                        _add_file(tar, entry)
                    else:
                        tar.addfile(_tarinfo(entry))
            raw.flush()
            os.fsync(raw.fileno())
        digest = digest_file(tmp)
        final = out_dir / f"{digest.removeprefix('sha256:')}.tar.gz"
        size = os.path.getsize(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    files = sum(1 for e in entries if e.kind != "dir")
    return Bundle(final, digest, size, files, content, tuple(warnings))


# --- safe_extract -------------------------------------------------------------------------


class _BoundedReader:
    """Decompressed bytes for tarfile, refused past what the members' data and headers explain.

    tarfile reads a member's pax or long-name header wholly into memory before yielding the
    member, so a gzip'd header of gigabytes would be a bomb no per-member check could stop.
    """

    def __init__(self, source: gzip.GzipFile, raw: BinaryIO, extractor: _Extractor, max_ratio: float) -> None:
        self._source = source
        self._raw = raw
        self._extractor = extractor
        self._max_ratio = max_ratio
        self.read_total = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size if size >= 0 else _CHUNK)
        self.read_total += len(data)
        if self.read_total > RATIO_FLOOR:
            # Measured on the bytes actually inflated, against the compressed bytes consumed so far (gzip reads
            # ahead a little, which only errs towards allowing): no header or gzip trailer is trusted.
            compressed = max(1, self._raw.tell())
            if self.read_total > self._max_ratio * compressed:
                raise BundleError(
                    f"refused bundle: {_human(compressed)} of it decompress to more than {_human(self.read_total)}, "
                    f"over {self._max_ratio:g} times its compressed size (max_ratio; a zip bomb). Bundle code, "
                    "not data: exclude large compressible files with .gridlabignore"
                )
        allowance = self._extractor.allowance()
        if self.read_total > allowance:
            last = self._extractor.last
            where = f"after member {last!r}" if last else "before the first member"
            raise BundleError(
                f"refused bundle: the tar headers {where} exceed "
                f"{_human(allowance - self._extractor.written)} (a header bomb)"
            )
        return data

    def write(self, b: bytes, /) -> int:
        raise OSError("read only")

    def tell(self) -> int:
        return self.read_total

    def seek(self, pos: int, /) -> int:
        raise OSError("not seekable")

    def close(self) -> None:
        """The gzip stream is closed by its owner."""


class _Extractor:
    """Writes members into `root` (a fresh private folder), checking each before it touches the disk."""

    def __init__(self, root: Path, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.members = 0
        self.written = 0
        self.last = ""  # the latest member's name, for errors raised between members
        self.links: list[tuple[str, str]] = []  # (member name, path on disk)
        self.dirs: set[str] = {""}  # "/a/b": folders known to be real folders, not links

    def allowance(self) -> int:
        """How many decompressed bytes the archive may have shown us so far."""
        return self.written + (self.members + 2) * _HEADER_ALLOWANCE + _READ_SLACK

    @staticmethod
    def refuse(name: str, rule: str) -> BundleError:
        return BundleError(f"refused bundle member {name!r}: {rule}")

    def parts(self, name: str, label: str) -> list[str]:
        """A member name's components, refusing anything that could point outside the folder."""
        if "\x00" in name:
            raise self.refuse(label, "names may not contain NUL")
        if name.startswith(("/", "\\")) or os.path.isabs(name) or PureWindowsPath(name).drive:
            raise self.refuse(label, "absolute paths are not allowed")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(label, "'..' components are not allowed")
        return parts

    def folder(self, name: str, parts: list[str], *, missing: str = "") -> Path:
        """The real folder holding `parts[-1]`, never reached through a symlink.

        Missing folders are created, or refused with the rule `missing` when one is given.
        """
        path, rel = self.root, ""
        for part in parts[:-1]:
            path, rel = path / part, f"{rel}/{part}"
            if rel in self.dirs:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if missing:
                    raise self.refuse(name, missing) from None
                _make_dir(path)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise self.refuse(name, f"it would be written through the symlink {rel[1:]!r}")
                if not stat.S_ISDIR(st.st_mode):
                    raise self.refuse(name, f"{rel[1:]!r} is not a folder")
            self.dirs.add(rel)
        return path

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = self.last = member.name
        self.members += 1
        if self.members > self.max_files:
            raise self.refuse(name, f"the bundle has more than {self.max_files} members (max_files)")
        parts = self.parts(name, name)
        if member.ischr() or member.isblk():
            raise self.refuse(name, "device files are not allowed")
        if member.isfifo():
            raise self.refuse(name, "FIFOs are not allowed")
        if member.issparse():
            raise self.refuse(name, "sparse files are not allowed")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise self.refuse(name, f"member type {member.type!r} is not allowed (only files, folders and links)")
        if not parts:
            if member.isdir():
                return  # "./": the folder itself
            raise self.refuse(name, "a member needs a name")
        folder = self.folder(name, parts)
        target = folder / parts[-1]
        rel = "/" + "/".join(parts)
        source: Path | None = None
        if member.issym():
            self.check_symlink(name, member.linkname, folder)
        elif member.islnk():
            source = self.check_hardlink(name, member.linkname)
        # A second opinion from the standard library's rules (3.11.4+, 3.10.12+), after ours.
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is not None:
            try:
                data_filter(member, self.real_root)
            except tarfile.FilterError as e:
                raise self.refuse(name, str(e)) from e
        try:
            if member.isdir():
                if rel not in self.dirs:
                    _make_dir(target)
                    self.dirs.add(rel)
            elif member.issym():
                os.symlink(member.linkname, target)
                self.links.append((name, str(target)))
            elif source is not None:
                os.link(source, target, follow_symlinks=False)
            else:
                self.write_file(tar, member, target)
        except FileExistsError as e:
            raise self.refuse(name, "it repeats a member already extracted") from e

    def check_symlink(self, name: str, linkname: str, folder: Path) -> None:
        if not linkname:
            raise self.refuse(name, "symlink without a target")
        if os.path.isabs(linkname) or PureWindowsPath(linkname).drive:
            raise self.refuse(name, f"symlink to the absolute path {linkname!r} is not allowed")
        if not _within(os.path.realpath(folder / linkname), self.real_root):
            raise self.refuse(name, f"symlink target {linkname!r} resolves outside the bundle folder")

    def check_hardlink(self, name: str, linkname: str) -> Path:
        """Hardlinks may only repeat a regular file this bundle already wrote."""
        try:
            parts = self.parts(linkname, name)
        except BundleError as e:
            raise self.refuse(name, f"hardlink target {linkname!r} leaves the bundle folder") from e
        not_ours = f"hardlink target {linkname!r} is not a file extracted earlier from this bundle"
        if not parts:
            raise self.refuse(name, not_ours)
        source = self.folder(name, parts, missing=not_ours) / parts[-1]
        try:
            regular = stat.S_ISREG(os.lstat(source).st_mode)
        except FileNotFoundError:
            regular = False
        if not regular:
            raise self.refuse(name, not_ours)
        return source

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        mode = 0o755 if member.mode & 0o111 else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise self.refuse(member.name, "no data")
        with source, os.fdopen(os.open(target, flags, mode), "wb") as out:
            # Count what is written, not what the header says: the cap holds whatever the archive claims.
            while chunk := source.read(_CHUNK):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise self.refuse(member.name, f"extracted data exceeds the {self.max_bytes}-byte cap (max_bytes)")
                out.write(chunk)
            os.fchmod(out.fileno(), mode)

    def check_links(self) -> None:
        """Links checked one by one can combine into one that leaves; check the finished tree."""
        for name, path in self.links:
            if not _within(os.path.realpath(path), self.real_root):
                raise self.refuse(name, "symlink resolves outside the bundle folder (through other links)")


def safe_extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> None:
    """Extract a possibly hostile .tar.gz into `dest`, which must not exist yet (its parent must).

    Members go into a private temp folder beside `dest`, renamed to `dest` only when every
    member passed, so a refused bundle leaves nothing behind. Refused: absolute paths, `..`,
    links whose target resolves outside, writing through a link, device files, FIFOs and
    other special members, sparse files, duplicates, more than `max_files` members, more
    than `max_bytes` of file data (counted as written), oversized headers, and zip bombs: past
    the first 10 MiB, a stream that inflates to more than `max_ratio` times the compressed bytes
    read so far (counted while inflating, never taken from a header). File modes become
    0o644, or 0o755 when any exec bit is set; owners and times are not restored.

    Raises:
        BundleError: the archive is refused or unreadable; the message names the member and rule.
    """
    archive_path, dest_path = Path(archive), Path(dest)
    if os.path.lexists(dest_path):
        raise BundleError(f"{dest_path} already exists; bundles are extracted into a new folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_path.name}.", suffix=".partial", dir=dest_path.parent))
    try:
        extractor = _Extractor(tmp, max_bytes, max_files)
        try:
            with open(archive_path, "rb") as raw, gzip.GzipFile(filename="", mode="rb", fileobj=raw) as gz:
                reader = _BoundedReader(gz, raw, extractor, max_ratio)
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    for member in tar:
                        extractor.extract(tar, member)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise BundleError(f"{archive_path.name} is not a readable .tar.gz bundle: {e}") from e
        extractor.check_links()
        os.chmod(tmp, 0o755)  # noqa: S103 - mkdtemp made it 0o700; code to run, not secrets
        if os.path.lexists(dest_path):
            raise BundleError(f"{dest_path} appeared while extracting; bundles are extracted into a new folder")
        os.rename(tmp, dest_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
