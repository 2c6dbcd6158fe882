"""A spec's code_digest and workdir are checked at submit; workdir is stored normalized."""

from __future__ import annotations

import pytest

from gridlab.scheduler.validate import SpecError, normalize
from gridlab.v1 import types_pb2

DIGEST = "sha256:" + "0123456789abcdef" * 4


def spec(**kw: str) -> types_pb2.RunSpec:
    return types_pb2.RunSpec(command=["python", "train.py"], **kw)


@pytest.mark.parametrize(("workdir", "stored"), [("", ""), ("src", "src"), ("./src/", "src"), ("a//b/./c", "a/b/c")])
def test_good_bundle_fields_pass(workdir: str, stored: str) -> None:
    s = spec(code_digest=DIGEST, workdir=workdir)
    normalize(s)
    assert s.code_digest == DIGEST
    assert s.workdir == stored


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"code_digest": "sha256:" + "0" * 63}, "64 lowercase hex"),
        ({"code_digest": DIGEST.upper()}, "64 lowercase hex"),
        ({"code_digest": "md5:" + "0" * 64}, "64 lowercase hex"),
        ({"code_digest": DIGEST + "\n"}, "64 lowercase hex"),
        ({"workdir": "src"}, "set code_digest too"),
        ({"code_digest": DIGEST, "workdir": "/abs"}, "absolute"),
        ({"code_digest": DIGEST, "workdir": "C:/x"}, "absolute"),
        ({"code_digest": DIGEST, "workdir": "../x"}, r"'\.\.'"),
        ({"code_digest": DIGEST, "workdir": "a/../../x"}, r"'\.\.'"),
        ({"code_digest": DIGEST, "workdir": "a\nb"}, "control character"),
        ({"code_digest": DIGEST, "workdir": "a\x00b"}, "control character"),
        ({"code_digest": DIGEST, "workdir": "a" * 1025}, "limit"),
    ],
)
def test_bad_bundle_fields_are_refused(fields: dict[str, str], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        normalize(spec(**fields))
