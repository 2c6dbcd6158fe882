"""Code bundles: deterministic, ignore-aware packing, and extraction that refuses hostile archives.

Every hostile archive is built by hand with tarfile (or raw bytes where tarfile would not lie),
extracted into `work/dest`, and must fail with a message naming the member and the rule while
leaving the whole test folder exactly as it was: no `dest`, no temp folder, nothing escaped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from gridlab.common.bundle import BundleError, digest_file, pack, safe_extract

MiB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------


def write(path: Path, data: str | bytes = "x", *, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(0o755 if executable else 0o644)
    return path


def make_tree(root: Path) -> Path:
    """A small project: code, an executable script, nested folders, an empty one, inner links."""
    write(root / "train.py", "print('hi')\n")
    write(root / "run.sh", "#!/bin/sh\necho run\n", executable=True)
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "model.py", "W = 1\n")
    write(root / "pkg" / "deep" / "data.bin", bytes(range(256)) * 4)
    (root / "empty").mkdir()
    (root / "model_link.py").symlink_to("pkg/model.py")
    (root / "pkg_link").symlink_to("pkg")
    return root


def members(bundle_path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle_path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under `root` with its kind and content (or link target), for before/after checks."""
    seen: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                seen[rel] = ("dir", "")
            else:
                seen[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


class Zeros(io.RawIOBase):
    """`n` zero bytes without holding them in memory: a highly compressible payload."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def member(name: str, kind: bytes = tarfile.REGTYPE, *, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


def build(path: Path, *items: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> Path:
    """A .tar.gz of the given members, in order; a (member, bytes) pair carries data."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:
        for item in items:
            if isinstance(item, tuple):
                info, data = item
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(item)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the extraction's parent that attacks aim at."""
    write(tmp_path / "outside" / "secret", "do not touch\n")
    return tmp_path / "outside"


def assert_refused(tmp_path: Path, archive: Path, match: str, **caps: int) -> BundleError:
    """safe_extract refuses `archive`, and the whole test folder is unchanged afterwards."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    dest = work / "dest"
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match=match) as info:
        safe_extract(archive, dest, **caps)
    assert not os.path.lexists(dest)
    assert snapshot(tmp_path) == before  # no temp folder left, nothing written anywhere
    return info.value


# --- digest_file ---------------------------------------------------------------------


def test_digest_file_streams_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    f = write(tmp_path / "f", data)
    assert digest_file(f) == "sha256:" + hashlib.sha256(data).hexdigest()


# --- pack: determinism -----------------------------------------------------------------


def test_same_tree_same_digest_and_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    a = pack(tree, tmp_path / "out")
    b = pack(tree, tmp_path / "out")
    assert a == b
    assert a.digest.startswith("sha256:")
    assert len(a.digest) == 7 + 64
    assert a.digest == digest_file(a.path)
    assert a.path.name == a.digest.removeprefix("sha256:") + ".tar.gz"
    assert a.size == a.path.stat().st_size
    assert a.files == 7  # 5 files and 2 links; folders are not counted
    assert a.content_bytes == sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert a.warnings == ()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [a.path.name]  # no temp file left


def test_copy_with_other_times_and_owner_modes_has_same_digest(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    for i, path in enumerate(sorted(copy.rglob("*"))):
        os.utime(path, (1_000_000 + i, 2_000_000 + i), follow_symlinks=False)
    (copy / "train.py").chmod(0o600)  # same class (not executable): same bundle
    (copy / "run.sh").chmod(0o700)
    assert pack(tree, tmp_path / "a").digest == pack(copy, tmp_path / "b").digest


def test_changed_byte_or_exec_bit_changes_digest(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = pack(tree, tmp_path / "out").digest
    data = bytearray((tree / "pkg" / "deep" / "data.bin").read_bytes())
    data[500] ^= 1
    (tree / "pkg" / "deep" / "data.bin").write_bytes(bytes(data))
    second = pack(tree, tmp_path / "out").digest
    assert second != first
    (tree / "train.py").chmod(0o755)
    assert pack(tree, tmp_path / "out").digest not in (first, second)


def test_headers_carry_nothing_about_the_machine(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    bundle = pack(tree, tmp_path / "out")
    found = members(bundle.path)
    assert list(found) == sorted(found, key=lambda n: n.split("/"))  # folder, then its sorted children
    for info in found.values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    assert found["run.sh"].mode == 0o755
    assert found["train.py"].mode == 0o644
    assert found["pkg"].mode == 0o755
    assert found["empty"].isdir()
    assert found["model_link.py"].issym()
    assert found["model_link.py"].linkname == "pkg/model.py"
    assert found["pkg_link"].issym()
    assert "pkg_link/model.py" not in found
    with open(bundle.path, "rb") as f:
        header = f.read(10)
    assert header[4:8] == bytes(4)  # gzip mtime 0
    assert not header[3] & 0x08  # no file name in the gzip header


# --- pack: what goes in ----------------------------------------------------------------


def test_gitignore_gridlabignore_and_git_are_excluded(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / ".gitignore", "*.log\nbuild/\n/top.txt\n__pycache__/\n")
    write(tree / ".gridlabignore", "data/\n!important.log\n")
    write(tree / "keep.py")
    write(tree / "debug.log")
    write(tree / "important.log")  # .gridlabignore re-includes what .gitignore drops
    write(tree / "top.txt")
    write(tree / "build" / "out.o")
    write(tree / "data" / "big.bin")
    write(tree / "pkg" / "__pycache__" / "m.pyc")
    write(tree / "pkg" / "top.txt")  # "/top.txt" is anchored to the root
    write(tree / "pkg" / "build")  # "build/" matches folders only
    write(tree / "pkg" / ".gitignore", "secret.txt\n!keep.log\nlocal/\n")
    write(tree / "pkg" / "secret.txt")
    write(tree / "pkg" / "keep.log")  # the deeper .gitignore re-includes it
    write(tree / "pkg" / "local" / "x.py")
    write(tree / "other" / "secret.txt")  # pkg/.gitignore applies under pkg/ only
    write(tree / ".git" / "config")
    write(tree / ".git" / "objects" / "ab" / "cd")
    write(tree / "vendor" / ".git", "gitdir: ../.git/modules/vendor\n")  # a submodule's .git file
    write(tree / "vendor" / "lib.py")

    names = set(members(pack(tree, tmp_path / "out").path))
    assert names == {
        ".gitignore",
        ".gridlabignore",
        "keep.py",
        "important.log",
        "pkg",
        "pkg/.gitignore",
        "pkg/top.txt",
        "pkg/build",
        "pkg/keep.log",
        "other",
        "other/secret.txt",
        "vendor",
        "vendor/lib.py",
    }


def test_invalid_ignore_pattern_is_skipped_with_a_warning(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "sub" / ".gitignore", "[z-a]\n*.log\n")
    write(tree / "sub" / "x.log")
    write(tree / "sub" / "x.py")
    bundle = pack(tree, tmp_path / "out")
    assert set(members(bundle.path)) == {"sub", "sub/.gitignore", "sub/x.py"}
    assert bundle.warnings == ("sub/.gitignore: skipped the invalid pattern '[z-a]'",)


def test_symlink_leaving_the_tree_is_refused_by_name(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    write(tmp_path / "elsewhere" / "weights.bin")
    (tree / "pkg" / "weights").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match=r"symlink pkg/weights -> .* points outside .*\.gridlabignore"):
        pack(tree, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The same link, ignored, is fine; an absolute link that stays inside is stored relative.
    write(tree / ".gridlabignore", "pkg/weights\n")
    (tree / "abs_link").symlink_to(tree / "pkg" / "model.py")
    found = members(pack(tree, tmp_path / "out").path)
    assert "pkg/weights" not in found
    assert found["abs_link"].linkname == "pkg/model.py"


def test_warns_past_warn_bytes_and_refuses_past_the_cap(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "code.py", "x" * 100)
    write(tree / "weights.bin", os.urandom(5000))
    bundle = pack(tree, tmp_path / "out", warn_bytes=4000)
    assert len(bundle.warnings) == 1
    assert "5100 bytes" in bundle.warnings[0]
    assert "weights.bin" in bundle.warnings[0]
    assert ".gridlabignore" in bundle.warnings[0]
    assert pack(tree, tmp_path / "out", warn_bytes=6000).warnings == ()

    with pytest.raises(BundleError) as info:
        pack(tree, tmp_path / "capped", max_bytes=5000)
    message = str(info.value)
    assert "5100 bytes" in message
    assert "5000 bytes cap" in message
    assert "weights.bin (5000 bytes)" in message
    assert ".gridlabignore" in message
    assert not (tmp_path / "capped").exists()


# --- round trip ------------------------------------------------------------------------


def test_pack_then_extract_reproduces_files_links_and_exec_bits(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    write(tree / "tools" / "lint", "#!/bin/sh\n", executable=True)
    bundle = pack(tree, tmp_path / "out")
    dest = tmp_path / "extracted"
    safe_extract(bundle.path, dest)
    assert snapshot(dest) == snapshot(tree)
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            got = (dest / path.relative_to(tree)).stat().st_mode
            assert bool(got & 0o100) == bool(path.stat().st_mode & 0o100), path
            assert stat.S_IMODE(got) in (0o644, 0o755)
    assert (dest / "model_link.py").read_text() == "W = 1\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extracted", "out", "tree"]  # no temp folder


def test_ordinary_tar_layouts_extract(tmp_path: Path) -> None:
    """`tar czf x.tgz .` style: a "./" entry, "./" prefixes, parents implied, an inner hardlink."""
    archive = build(
        tmp_path / "ok.tar.gz",
        member("./", tarfile.DIRTYPE),
        (member("./a/b/c.txt"), b"hello"),
        member("./a/b/again.txt", tarfile.LNKTYPE, linkname="a/b/c.txt"),
        member("./a", tarfile.DIRTYPE),
        member("./up", tarfile.SYMTYPE, linkname="a/b/../b/c.txt"),
    )
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "a" / "b" / "again.txt").read_bytes() == b"hello"
    assert (tmp_path / "dest" / "up").read_bytes() == b"hello"


def test_existing_destination_is_refused(tmp_path: Path) -> None:
    archive = build(tmp_path / "ok.tar.gz", (member("f"), b"x"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        safe_extract(archive, tmp_path / "dest")
    assert not any((tmp_path / "dest").iterdir())


# --- hostile bundles -------------------------------------------------------------------


def test_absolute_path_is_refused(tmp_path: Path, outside: Path) -> None:
    target = str(outside / "pwned")
    archive = build(tmp_path / "evil.tar.gz", (member(target), b"pwned"))
    assert_refused(tmp_path, archive, f"member '{target}': absolute paths are not allowed")


@pytest.mark.parametrize("name", ["../pwned", "a/../../pwned", "ok/../../../outside/secret"])
def test_dotdot_escape_is_refused(tmp_path: Path, outside: Path, name: str) -> None:
    archive = build(tmp_path / "evil.tar.gz", (member("fine.txt"), b"ok"), (member(name), b"pwned"))
    assert_refused(tmp_path, archive, rf"member '{name}': '\.\.' components are not allowed")


def test_symlink_out_absolute_is_refused(tmp_path: Path, outside: Path) -> None:
    archive = build(
        tmp_path / "evil.tar.gz",
        member("escape", tarfile.SYMTYPE, linkname=str(outside)),
        (member("escape/pwned"), b"pwned"),
    )
    assert_refused(tmp_path, archive, "member 'escape': symlink to the absolute path .* is not allowed")


def test_symlink_out_relative_is_refused(tmp_path: Path, outside: Path) -> None:
    archive = build(
        tmp_path / "evil.tar.gz",
        member("sub", tarfile.DIRTYPE),
        member("sub/escape", tarfile.SYMTYPE, linkname="../../../outside"),
        (member("sub/escape/pwned"), b"pwned"),
    )
    assert_refused(tmp_path, archive, "member 'sub/escape': symlink target '../../../outside' resolves outside")


@pytest.mark.parametrize("linkname", ["../../outside/secret", "/etc/passwd"])
def test_hardlink_out_is_refused(tmp_path: Path, outside: Path, linkname: str) -> None:
    archive = build(tmp_path / "evil.tar.gz", member("h", tarfile.LNKTYPE, linkname=linkname))
    assert_refused(tmp_path, archive, f"member 'h': hardlink target '{linkname}' leaves the bundle folder")


def test_hardlink_to_a_link_or_nothing_is_refused(tmp_path: Path) -> None:
    archive = build(
        tmp_path / "evil.tar.gz",
        member("l", tarfile.SYMTYPE, linkname="."),
        member("h", tarfile.LNKTYPE, linkname="l"),
    )
    assert_refused(tmp_path, archive, "member 'h': hardlink target 'l' is not a file extracted earlier")
    archive = build(tmp_path / "evil.tar.gz", member("h", tarfile.LNKTYPE, linkname="missing/f"))
    assert_refused(tmp_path, archive, "member 'h': hardlink target 'missing/f' is not a file extracted earlier")


def test_file_written_through_a_symlink_is_refused(tmp_path: Path, outside: Path) -> None:
    # Each link resolves inside when it is made ("x" is missing, so "x/.." is the folder itself),
    # but once x -> "." exists, a -> x/.. means the folder's parent: writing a/pwned would escape.
    archive = build(
        tmp_path / "evil.tar.gz",
        member("a", tarfile.SYMTYPE, linkname="x/.."),
        member("x", tarfile.SYMTYPE, linkname="."),
        (member("a/pwned"), b"pwned"),
    )
    assert_refused(tmp_path, archive, "member 'a/pwned': it would be written through the symlink 'a'")


def test_symlink_to_a_folder_then_a_file_through_it_is_refused(tmp_path: Path) -> None:
    archive = build(
        tmp_path / "evil.tar.gz",
        member("real", tarfile.DIRTYPE),
        member("d", tarfile.SYMTYPE, linkname="real"),
        (member("d/f.txt"), b"through"),
    )
    assert_refused(tmp_path, archive, "member 'd/f.txt': it would be written through the symlink 'd'")


def test_links_that_leave_only_together_are_refused(tmp_path: Path) -> None:
    archive = build(
        tmp_path / "evil.tar.gz",
        member("a", tarfile.SYMTYPE, linkname="x/.."),
        member("x", tarfile.SYMTYPE, linkname="."),
    )
    assert_refused(tmp_path, archive, "member 'a': symlink resolves outside the bundle folder")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_file_is_refused(tmp_path: Path, kind: bytes) -> None:
    dev = member("dev/null", kind)
    dev.devmajor, dev.devminor = 1, 3
    archive = build(tmp_path / "evil.tar.gz", (member("fine.txt"), b"ok"), dev)
    assert_refused(tmp_path, archive, "member 'dev/null': device files are not allowed")


def test_fifo_is_refused(tmp_path: Path) -> None:
    archive = build(tmp_path / "evil.tar.gz", member("pipe", tarfile.FIFOTYPE))
    assert_refused(tmp_path, archive, "member 'pipe': FIFOs are not allowed")


def test_unknown_member_type_is_refused(tmp_path: Path) -> None:
    """Tar has no socket type; anything that is not a file, folder or link is refused."""
    archive = build(tmp_path / "evil.tar.gz", member("sock", b"s"))
    assert_refused(tmp_path, archive, "member 'sock': member type b's' is not allowed")


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    archive = build(
        tmp_path / "evil.tar.gz",
        (member("f"), b"first"),
        member("f", tarfile.SYMTYPE, linkname="."),
    )
    assert_refused(tmp_path, archive, "member 'f': it repeats a member already extracted")


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    archive = build(tmp_path / "evil.tar.gz", *[(member(f"f{i:02}"), b"") for i in range(11)])
    assert_refused(tmp_path, archive, r"member 'f10': the bundle has more than 10 members \(max_files\)", max_files=10)
    safe_extract(archive, tmp_path / "ok", max_files=11)
    assert len(list((tmp_path / "ok").iterdir())) == 11


def test_compressible_bomb_is_stopped_at_the_cap(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.addfile(member("zeros.bin", size=50 * MiB), Zeros(50 * MiB))
    assert archive.stat().st_size < MiB
    assert_refused(tmp_path, archive, r"member 'zeros.bin': extracted data exceeds the 1048576-byte cap", max_bytes=MiB)


def zero_bomb(path: Path, size: int, *, lie: bool = False) -> Path:
    """A .tar.gz of one file of `size` zeros (about 1000:1); `lie`: its ustar header claims 10 bytes and a
    pax record the real size, so no header field the extractor might trust tells the truth."""
    info = member("zeros.bin", size=10 if lie else size)
    if lie:
        info.pax_headers = {"size": str(size)}
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        zeros = Zeros(size)
        while chunk := zeros.read(4 * MiB):
            gz.write(chunk)
        gz.write(bytes(-size % 512 + 1024))
    return path


def test_zip_bomb_is_refused_by_its_compression_ratio_long_before_the_size_cap(tmp_path: Path) -> None:
    """200 MiB of zeros from a few hundred KB: under the 1 GiB default cap, but a 1000:1 stream is a bomb."""
    archive = zero_bomb(tmp_path / "evil.tar.gz", 200 * MiB)
    assert archive.stat().st_size < MiB
    assert_refused(tmp_path, archive, r"over 100 times its compressed size \(max_ratio; a zip bomb\)")


def test_zip_bomb_whose_headers_lie_is_still_measured_while_inflating(tmp_path: Path) -> None:
    archive = zero_bomb(tmp_path / "evil.tar.gz", 100 * MiB, lie=True)
    assert_refused(tmp_path, archive, r"max_ratio; a zip bomb")


def test_the_ratio_is_only_checked_past_a_floor_and_can_be_raised(tmp_path: Path) -> None:
    """Small compressible bundles (an empty checkpoint, a padded file) are fine; the ratio is a parameter."""
    small = zero_bomb(tmp_path / "small.tar.gz", 8 * MiB)
    safe_extract(small, tmp_path / "small")
    assert (tmp_path / "small" / "zeros.bin").stat().st_size == 8 * MiB
    big = zero_bomb(tmp_path / "big.tar.gz", 30 * MiB)
    assert_refused(tmp_path, big, "max_ratio")
    safe_extract(big, tmp_path / "big", max_ratio=5000)
    assert (tmp_path / "big" / "zeros.bin").stat().st_size == 30 * MiB


def test_an_ordinary_compressible_bundle_passes_the_ratio(tmp_path: Path) -> None:
    """Source-like text (about 5:1 to 20:1) well past the floor extracts."""
    lines = b"".join(f"def f_{i}(x):\n    return x * {i} + {i % 7}  # comment {i}\n".encode() for i in range(400_000))
    assert len(lines) > 20 * MiB
    archive = build(tmp_path / "code.tar.gz", (member("big_module.py"), lines))
    assert len(lines) / archive.stat().st_size < 100
    safe_extract(archive, tmp_path / "ok")
    assert (tmp_path / "ok" / "big_module.py").read_bytes() == lines


def test_member_whose_header_lies_about_its_size_is_stopped_at_the_cap(tmp_path: Path) -> None:
    """The ustar size field says 10 bytes; a pax record says, and the data is, 50 MiB."""
    liar = member("liar.bin", size=10)
    liar.pax_headers = {"size": str(50 * MiB)}
    archive = tmp_path / "evil.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as gz:
        header = liar.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        assert int(header[-512 + 124 : -512 + 135], 8) == 10
        gz.write(header)
        for _ in range(50):
            gz.write(bytes(MiB))
        gz.write(bytes(1024))
    assert_refused(tmp_path, archive, r"member 'liar.bin': extracted data exceeds the 1048576-byte cap", max_bytes=MiB)


def test_truncated_member_is_refused(tmp_path: Path) -> None:
    """A header claiming more data than the archive holds."""
    archive = tmp_path / "evil.tar.gz"
    with gzip.open(archive, "wb") as gz:
        gz.write(member("short.bin", size=5 * MiB).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        gz.write(b"a" * 1024)
    assert_refused(tmp_path, archive, "evil.tar.gz is not a readable .tar.gz bundle")


def test_header_bomb_is_stopped(tmp_path: Path) -> None:
    """A 20 MB pax record is read into memory by tarfile before any member check could run."""
    bomb = member("after-bomb.txt")
    bomb.pax_headers = {"comment": "x" * (20 * MiB)}
    archive = build(tmp_path / "evil.tar.gz", (member("first.txt"), b"ok"), (bomb, b"x"))
    assert archive.stat().st_size < MiB
    assert_refused(tmp_path, archive, "tar headers after member 'first.txt' exceed .* header bomb", max_bytes=MiB)


def test_garbage_is_refused(tmp_path: Path) -> None:
    archive = write(tmp_path / "evil.tar.gz", b"not a gzip file at all")
    assert_refused(tmp_path, archive, "evil.tar.gz is not a readable .tar.gz bundle")
