"""Path normalization (Istio BASE / MERGE_SLASHES / DECODE_AND_MERGE_SLASHES)."""

from __future__ import annotations

import pytest

from secmesh.policy.normalize import InvalidPath, PathNormalization, normalize_path

B, M, D = PathNormalization.BASE, PathNormalization.MERGE_SLASHES, PathNormalization.DECODE_AND_MERGE_SLASHES


@pytest.mark.parametrize("raw,mode,want", [
    ("/a/b", B, "/a/b"),
    ("/a/b?x=1", B, "/a/b"),
    ("/a/b#frag", B, "/a/b"),
    ("/a/./b", B, "/a/b"),
    ("/a/../b", B, "/b"),
    ("/../../a", B, "/a"),
    ("/a/b/..", B, "/a/"),
    ("/a/.", B, "/a/"),
    ("/%61%62c", B, "/abc"),              # unreserved decoded
    ("/a%2e%2e/x", B, "/a../x"),
    ("/a/%2e%2e/x", B, "/x"),              # encoded dot segment resolved after decoding
    ("/a%2fb", B, "/a%2Fb"),               # reserved stays encoded (hex upper-cased)
    ("/a%7e", B, "/a~"),
    ("/a\\b\\..\\c", B, "/a/c"),           # backslash → slash, then dots
    ("/a//b", B, "/a//b"),                 # BASE does not merge
    ("/a//b", M, "/a/b"),
    ("/a%2Fb//c", M, "/a%2Fb/c"),
    ("/a%2Fb//c", D, "/a/b/c"),
    ("/a%5Cb", D, "/a/b"),
    ("/a%zz", B, "/a%zz"),                 # invalid escape left alone
    ("/x?y/../z", B, "/x"),                # query never normalized into the path
])
def test_normalize(raw: str, mode: PathNormalization, want: str) -> None:
    assert normalize_path(raw, mode) == want


@pytest.mark.parametrize("raw", ["/a%00b", "/a\x00", "relative/path", ""])
def test_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(raw)


def test_none_only_strips_query() -> None:
    assert normalize_path("/a/../b?q", PathNormalization.NONE) == "/a/../b"
