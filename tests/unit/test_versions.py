"""Versions, ranges, image references and image patterns (dsguard.versions).

Image-reference tables are ported from github.com/distribution/reference (reference_test.go,
normalize_test.go), restated for ParseNormalizedNamed, which is what Kubernetes applies to `image:`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsguard.versions import (
    PRE_ALPHA,
    PRE_BETA,
    PRE_RC,
    RELEASE,
    ImageRef,
    Version,
    VersionRange,
    _parse_reference,
    image_pattern_matches,
    validate_image_pattern,
)

Key = tuple[int, int, int, int, int]

SHA256_F = "sha256:" + "f" * 64
SHA512_F = "sha512:" + "f" * 128
REDIS_DIGEST = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"


def v(text: str) -> Version:
    parsed = Version.parse(text)
    assert parsed is not None, text
    return parsed


# --------------------------------------------------------------------------------------------------------
# Version.parse
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("1.31.0", (1, 31, 0, RELEASE, 0)),
        ("v1.31.0", (1, 31, 0, RELEASE, 0)),
        ("V1.31.0", (1, 31, 0, RELEASE, 0)),
        ("1.31", (1, 31, 0, RELEASE, 0)),
        ("2", (2, 0, 0, RELEASE, 0)),
        ("v2", (2, 0, 0, RELEASE, 0)),
        ("010.002.003", (10, 2, 3, RELEASE, 0)),
        ("2.1.0-debian-12-r3", (2, 1, 0, RELEASE, 0)),  # the numbers of a non-pre suffix don't count
        ("v1.31.4+k3s1", (1, 31, 4, RELEASE, 0)),
        ("v1.30.2-eks-a1b2", (1, 30, 2, RELEASE, 0)),
        ("v1.29.3-gke.1093000", (1, 29, 3, RELEASE, 0)),
        ("3.1-alpine3.19", (3, 1, 0, RELEASE, 0)),  # alpine is not alpha
        ("1.25_build", None),  # '_' does not start a suffix
        ("2.1.0-alpha", (2, 1, 0, PRE_ALPHA, 0)),
        ("2.1.0-ALPHA.3", (2, 1, 0, PRE_ALPHA, 3)),
        ("2.1.0-beta2", (2, 1, 0, PRE_BETA, 2)),
        ("2.1.0-Beta-7", (2, 1, 0, PRE_BETA, 7)),
        ("2.1.0-rc1", (2, 1, 0, PRE_RC, 1)),
        ("2.1.0-rc.2", (2, 1, 0, PRE_RC, 2)),
        ("2.1.0-RC.3-debian-12", (2, 1, 0, PRE_RC, 3)),  # first number in the suffix
        ("v1.32.0-rc.0+k3s1", (1, 32, 0, PRE_RC, 0)),
        ("1.0.0+rc1", (1, 0, 0, PRE_RC, 1)),  # the spec reads '+' suffixes the same way as '-' ones
        ("1.0.0-foo-rc1", (1, 0, 0, RELEASE, 0)),  # must *start* with the pre-release word
        # Not versions: tags that name no version, and malformed ones.
        ("latest", None),
        ("stable", None),
        ("main-abc123", None),
        ("sha256:" + "f" * 64, None),
        ("", None),
        ("v", None),
        ("1.", None),
        ("1..2", None),
        (".1", None),
        ("1.2.3.4", None),
        ("1.2.3-", None),
        ("1.2.3+", None),
        ("1.2.3 ", None),
        (" 1.2.3", None),
        ("1.2.3\n", None),
        ("1.2.x", None),
        ("vv1", None),
        ("٣.١", None),  # Arabic-Indic digits: int() would accept them, tags can't contain them
        ("１.２", None),  # fullwidth digits
        ("9" * 300, None),  # over the length cap, far from int()'s digit limit
    ],
)
def test_version_parse(text: str, key: Key | None) -> None:
    parsed = Version.parse(text)
    if key is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert parsed.key == key
        assert (parsed.major, parsed.minor, parsed.patch, parsed.pre_rank, parsed.pre_num) == key
        assert parsed.text == text
        assert str(parsed) == text


def test_version_parse_is_cached() -> None:
    assert Version.parse("1.2.3-rc.1") is Version.parse("1.2.3-rc.1")


# Ascending; versions in the same inner list are equal.
ORDERED = [
    ["0.9"],
    ["1.30.2-eks-a1b2", "v1.30.2", "1.30.2+k3s1"],
    ["1.31.0-alpha", "1.31.0-alpha.0", "1.31.0-ALPHA0"],
    ["1.31.0-alpha.1"],
    ["1.31.0-beta"],
    ["1.31.0-beta.2", "v1.31.0-beta2"],
    ["1.31.0-rc.1", "1.31.0-rc1", "1.31.0-RC1-debian"],
    ["1.31.0-rc.2"],
    ["1.31.0-rc.10"],
    ["1.31", "1.31.0", "v1.31.0+k3s1", "1.31.0-debian-12-r3", "1.31.0-gke.100"],
    ["1.31.4+k3s1", "v1.31.4"],
    ["1.32.0-alpha.0"],
    ["1.32.0"],
    ["2", "2.0", "2.0.0"],
    ["2.1.0-alpha"],
    ["2.1.0-beta"],
    ["2.1.0-rc.1"],
    ["2.1.0-rc.2"],
    ["2.1.0", "2.1.0-debian-12-r3"],
    ["10.0.0"],
]


def test_ordering_table() -> None:
    flat = [(rank, v(text)) for rank, group in enumerate(ORDERED) for text in group]
    for rank_a, a in flat:
        for rank_b, b in flat:
            assert (a < b) == (rank_a < rank_b), (a, b)
            assert (a == b) == (rank_a == rank_b), (a, b)
            assert (a > b) == (rank_a > rank_b), (a, b)
            assert (a <= b) == (rank_a <= rank_b), (a, b)
            assert (a >= b) == (rank_a >= rank_b), (a, b)
            assert (a != b) == (rank_a != rank_b), (a, b)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("2.1.0-rc1", "2.1.0"),
        ("2.1.0-alpha", "2.1.0-beta"),
        ("2.1.0-beta", "2.1.0-rc.1"),
        ("2.1.0-rc.1", "2.1.0-rc.2"),
        ("2.1.0-rc.2", "2.1.0"),
        ("2.1.0-rc.9", "2.1.0-rc.10"),  # numerically, not as text
        ("1.9.0", "1.10.0"),
        ("2.0.99", "2.1.0-alpha"),
    ],
)
def test_version_less(low: str, high: str) -> None:
    assert v(low) < v(high)
    assert not v(high) < v(low)


def test_equality_ignores_text_but_keeps_it() -> None:
    a, b = v("2.1.0-debian-12-r3"), v("2.1.0")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert (str(a), str(b)) == ("2.1.0-debian-12-r3", "2.1.0")


def test_version_is_not_comparable_with_other_types() -> None:
    text: object = "1.0"
    assert v("1.0") != text
    with pytest.raises(TypeError):
        _ = v("1.0") < "1.0"  # type: ignore[operator]


# --------------------------------------------------------------------------------------------------------
# VersionRange
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_text", "version", "expected"),
    [
        (">=1.31.0,<1.32", "v1.31.4+k3s1", True),
        (">=1.31.0,<1.32", "v1.31.0", True),
        (">=1.31.0,<1.32", "1.32.0", False),
        (">=1.31.0,<1.32", "1.32.0-rc.1", True),  # pre-releases of 1.32 are below 1.32
        (">=1.31.0,<1.32", "1.30.9", False),
        (">=1.31.0,<1.32", "1.31.0-rc.1", False),
        (">=1.31.0", "v1.31.0-eks-a1b2", True),
        (">=2.0.0", "2.1.0-debian-12-r3", True),
        (">=2.0.0", "2.0.0-rc.1", False),
        (">=2.0.0-rc.1", "2.0.0-rc.1", True),
        (">=2.0.0-rc.1", "2.0.0-beta.9", False),
        (">2.0.0", "2.0.0-debian-12", False),
        (">2.0", "2.0.1", True),
        ("<=1.31", "1.31.0+k3s1", True),
        ("<=1.31", "1.31.1", False),
        ("<1.31", "1.30.99", True),
        ("==1.31", "v1.31.0", True),
        ("==1.31", "1.31.4", False),  # missing parts are 0, not wildcards
        ("==2.1.0", "2.1.0-debian-12-r3", True),
        ("!=2.1.0", "2.1.0-debian-12-r3", False),
        ("!=2.1.0", "2.1.1", True),
        (">=1.0, !=1.5.0, <2", "1.5.0", False),
        (">=1.0, !=1.5.0, <2", "1.5.1", True),
        ("  >= 1.29 ,< 1.33  ", "1.32.3", True),
        (">=v1.29", "1.29.0", True),
        (">=2,<1", "1.5", False),  # empty ranges are allowed and contain nothing
    ],
)
def test_range_contains(range_text: str, version: str, expected: bool) -> None:
    assert VersionRange.parse(range_text).contains(v(version)) is expected


def test_range_parse_fields() -> None:
    r = VersionRange.parse(" >= 1.31.0 , <1.32 ")
    assert r.text == " >= 1.31.0 , <1.32 "
    assert str(r) == r.text
    assert [(op, b.key) for op, b in r.comparators] == [
        (">=", (1, 31, 0, RELEASE, 0)),
        ("<", (1, 32, 0, RELEASE, 0)),
    ]
    assert [str(b) for _, b in r.comparators] == ["1.31.0", "1.32"]
    assert VersionRange.parse(">=1.31.0,<1.32") is VersionRange.parse(">=1.31.0,<1.32")


HELP = "expected one of >=, >, <=, <, ==, != followed by a version like 1.31.0"


@pytest.mark.parametrize(
    ("range_text", "message"),
    [
        (">=1.x", f"'>=1.x' is not a comparator: {HELP}"),
        (">=1.31.0,<1.x", f"'<1.x' is not a comparator: {HELP} (in range '>=1.31.0,<1.x')"),
        ("1.31.0", f"'1.31.0' is not a comparator: {HELP}"),
        ("=1.31.0", "'=1.31.0' is not a comparator"),
        ("=>1.31.0", "'=>1.31.0' is not a comparator"),
        ("~1.31", "'~1.31' is not a comparator"),
        ("^1.31", "'^1.31' is not a comparator"),
        (">=latest", "'>=latest' is not a comparator"),
        (">=", "'>=' is not a comparator"),
        (">=1.31 <1.32", "'>=1.31 <1.32' is not a comparator"),  # a missing comma
        (">=1.31;<1.32", "'>=1.31;<1.32' is not a comparator"),
        (">=1.31,", "'' is not a comparator"),
        (",>=1.31", "'' is not a comparator"),
        (">=1.31,,<2", "'' is not a comparator"),
        ("", "version range '' is empty"),
        ("   ", "version range '   ' is empty"),
    ],
)
def test_range_parse_errors(range_text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        VersionRange.parse(range_text)
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------------------
# ImageRef.parse
# --------------------------------------------------------------------------------------------------------

# (input, repository, tag, digest): reference_test.go TestReferenceParse, normalized.
REFERENCES = [
    ("test_com", "docker.io/library/test_com", None, None),
    ("test.com:tag", "docker.io/library/test.com", "tag", None),
    ("test.com:5000", "docker.io/library/test.com", "5000", None),  # one element: never host:port
    ("test.com/repo:tag", "test.com/repo", "tag", None),
    ("test:5000/repo", "test:5000/repo", None, None),
    ("test:5000/repo:tag", "test:5000/repo", "tag", None),
    (f"test:5000/repo@{SHA256_F}", "test:5000/repo", None, SHA256_F),
    (f"test:5000/repo:tag@{SHA256_F}", "test:5000/repo", "tag", SHA256_F),
    ("lowercase:Uppercase", "docker.io/library/lowercase", "Uppercase", None),
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io/" + "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
    ),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux", None, None),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux", "some-long-tag", None),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io/test.example.com/my-app",
        "test.example.com",
        None,
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage", "xn--n3h.com", None),
    (f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}", "xn--7o8h.com/myimage", "xn--7o8h.com", SHA512_F),
    ("foo_bar.com:8080", "docker.io/library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io/library/192.168.1.1", None, None),
    ("192.168.1.1:tag", "docker.io/library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io/library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1/repo", None, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000/repo", None, None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo", None, None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000/repo", None, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000/repo", "tag", None),
    (f"[2001:db8::1]:5000/repo@{SHA256_F}", "[2001:db8::1]:5000/repo", None, SHA256_F),
    (f"[2001:db8::1]:5000/repo:tag@{SHA256_F}", "[2001:db8::1]:5000/repo", "tag", SHA256_F),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000/repo", None, None),
    # normalize_test.go TestParseReferenceWithTagAndDigest, TestParseAnyReference, TestParseDockerRef.
    (
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        "docker.io/library/busybox",
        "latest",
        "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
    ),
    ("redis", "docker.io/library/redis", None, None),
    ("redis:latest", "docker.io/library/redis", "latest", None),
    ("docker.io/library/redis:latest", "docker.io/library/redis", "latest", None),
    (f"redis@{REDIS_DIGEST}", "docker.io/library/redis", None, REDIS_DIGEST),
    (f"docker.io/library/redis@{REDIS_DIGEST}", "docker.io/library/redis", None, REDIS_DIGEST),
    ("dmcgowan/myapp", "docker.io/dmcgowan/myapp", None, None),
    ("dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp", "latest", None),
    ("docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp", "latest", None),
    (f"dmcgowan/myapp@{REDIS_DIGEST}", "docker.io/dmcgowan/myapp", None, REDIS_DIGEST),
    (REDIS_DIGEST[:-1].removeprefix("sha256:"), "docker.io/library/" + REDIS_DIGEST[7:-1], None, None),
    ("dbcc1", "docker.io/library/dbcc1", None, None),
    # ParseNormalizedNamed (unlike ParseAnyReference) reads a bare digest as repository "sha256" + tag.
    (REDIS_DIGEST, "docker.io/library/sha256", REDIS_DIGEST[7:], None),
    ("library/busybox", "docker.io/library/busybox", None, None),
    ("docker.io/busybox", "docker.io/library/busybox", None, None),
    ("docker.io/busybox:latest", "docker.io/library/busybox", "latest", None),
    ("gcr.io/library/busybox", "gcr.io/library/busybox", None, None),
    (f"gcr.io/library/busybox:latest@{SHA256_F}", "gcr.io/library/busybox", "latest", SHA256_F),
    # The cases the webhook meets.
    ("nginx", "docker.io/library/nginx", None, None),
    ("nginx:1.25", "docker.io/library/nginx", "1.25", None),
    ("fluent/fluent-bit:3.1", "docker.io/fluent/fluent-bit", "3.1", None),
    ("index.docker.io/fluent/fluent-bit:3.1", "docker.io/fluent/fluent-bit", "3.1", None),
    ("index.docker.io/nginx", "docker.io/library/nginx", None, None),
    ("localhost/x", "localhost/x", None, None),
    ("localhost:5000/x", "localhost:5000/x", None, None),
    ("localhost:5000/x:1.0", "localhost:5000/x", "1.0", None),
    ("localhost:5000", "docker.io/library/localhost", "5000", None),  # FIXME upstream too
    ("registry.k8s.io/kube-proxy:v1.31.0", "registry.k8s.io/kube-proxy", "v1.31.0", None),
    ("bitnami/fluentd:1.17.1-debian-12-r3", "docker.io/bitnami/fluentd", "1.17.1-debian-12-r3", None),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/agent:2.0.0",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/agent",
        "2.0.0",
        None,
    ),
    ("Foo/bar", "Foo/bar", None, None),  # upper-case first element: a host
    ("FOO/bar:v1", "FOO/bar", "v1", None),
    (f"x:5000/y@sha384:{'a' * 96}", "x:5000/y", None, f"sha384:{'a' * 96}"),
    ("x/y:" + "t" * 128, "docker.io/x/y", "t" * 128, None),
    ("x/y:_tag", "docker.io/x/y", "_tag", None),
    ("dock__er/do-----cker", "docker.io/dock__er/do-----cker", None, None),
]


@pytest.mark.parametrize(("text", "repository", "tag", "digest"), REFERENCES)
def test_image_ref_parse(text: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = ImageRef.parse(text)
    assert (ref.raw, ref.repository, ref.tag, ref.digest) == (text, repository, tag, digest)
    assert str(ref) == text
    assert ImageRef.parse(text) is ref  # cached


# (input, expected message fragment)
INVALID_REFERENCES = [
    # reference_test.go TestReferenceParse
    ("", "reference is empty"),
    (":justtag", "invalid reference format"),
    (f"@{SHA256_F}", "invalid reference format"),
    ("repo@sha256:" + "f" * 34, "sha256 digest must be 64 lower-case hex characters"),
    ("validname@invaliddigest:" + "f" * 64, "unsupported digest algorithm 'invaliddigest'"),
    ("Uppercase:tag", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    ("a/" * 128 + "a:tag", "must not be more than 255 characters"),
    ("aa/asdf$$^/aa", "invalid reference format"),
    ("[2001:db8::1]", "invalid reference format"),
    ("[2001:db8::1]:5000", "invalid reference format"),
    ("[2001:db8::1]:tag", "invalid reference format"),
    ("[fe80::1%eth0]:5000/repo", "invalid reference format"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid reference format"),
    # normalize_test.go TestValidateReferenceName / TestValidateRemoteName
    ("https://github.com/docker/docker", "invalid reference format"),
    ("docker/Docker", "must be lowercase"),
    ("-docker", "invalid reference format"),
    ("-docker/docker", "invalid reference format"),
    ("-docker.io/docker/docker", "invalid reference format"),
    ("docker///docker", "invalid reference format"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("docker.io/docker///docker", "invalid reference format"),
    ("[fc00::1]", "invalid reference format"),
    ("[fc00::1]:5000", "invalid reference format"),
    ("fc00::1:5000/debian", "invalid reference format"),
    ("[fe80::1%eth0]:5000/debian", "invalid reference format"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid reference format"),
    (REDIS_DIGEST[7:], "cannot specify 64-byte hexadecimal strings"),
    ("docker-/docker", "invalid reference format"),
    ("-docker-/docker", "invalid reference format"),
    ("____/____", "invalid reference format"),
    ("_docker/_docker", "invalid reference format"),
    ("dock..er/docker", "invalid reference format"),
    ("dock_.er/docker", "invalid reference format"),
    ("dock-.er/docker", "invalid reference format"),
    ("docker/", "invalid reference format"),
    ("this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 4 + "/docker", "255"),
    # normalize_test.go TestInvalidReferenceComponents
    ("-foo", "invalid reference format"),
    ("busybox:-foo", "invalid reference format"),
    ("busybox@foo", "invalid reference format"),
    # Digests as go-digest validates them.
    ("repo@sha256:" + "F" * 64, "lower-case hex"),
    ("repo@sha256:" + "f" * 65, "sha256 digest must be 64"),
    ("repo@sha512:" + "f" * 64, "sha512 digest must be 128"),
    ("repo@md5:" + "f" * 32, "unsupported digest algorithm 'md5'"),
    # What Python's re would let through if ported carelessly ('$' before '\n', Unicode \w).
    ("nginx\n", "invalid reference format"),
    ("nginx:1.25\n", "invalid reference format"),
    (" nginx", "invalid reference format"),
    ("nginx:1.25 ", "invalid reference format"),
    ("nginx:１", "invalid reference format"),
    ("nginx:é", "invalid reference format"),
    # Tags: at most 128 characters, not starting with '.' or '-'.
    ("x/y:" + "t" * 129, "invalid reference format"),
    ("x/y:.tag", "invalid reference format"),
    ("x/y:", "invalid reference format"),
    ("x/y@", "invalid reference format"),
    ("x/y:1@", "invalid reference format"),
    ("x/y@sha256:abc:def", "invalid reference format"),
    ("x" * 2000, "longer than 1024 characters"),
]


@pytest.mark.parametrize(("text", "message"), INVALID_REFERENCES)
def test_image_ref_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ImageRef.parse(text)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid image reference " + repr(text[:64])[:-1])


# normalize_test.go TestValidateReferenceName / TestValidateRemoteName: valid names.
VALID_NAMES = [
    "docker/docker",
    "library/debian",
    "debian",
    "docker.io/docker/docker",
    "docker.io/library/debian",
    "docker.io/debian",
    "index.docker.io/docker/docker",
    "index.docker.io/library/debian",
    "index.docker.io/debian",
    "127.0.0.1:5000/docker/docker",
    "127.0.0.1:5000/library/debian",
    "127.0.0.1:5000/debian",
    "192.168.0.1",
    "192.168.0.1:80",
    "192.168.0.1:8/debian",
    "192.168.0.2:25000/debian",
    "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
    "[fc00::1]:5000/docker",
    "[fc00::1]:5000/docker/docker",
    "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
    "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    "Docker/docker",
    "DOCKER/docker",
    "docker-rules/docker",
    "docker---rules/docker",
    "doc/docker",
    "d/docker",
    "jess/t",
    "dock__er/docker",
]


@pytest.mark.parametrize("text", VALID_NAMES)
def test_valid_names(text: str) -> None:
    ImageRef.parse(text)


# normalize_test.go TestParseRepositoryInfo: (spellings, full name, familiar name, domain, path).
REPOSITORY_INFO = [
    (["fooo/bar", "index.docker.io/fooo/bar"], "docker.io/fooo/bar", "fooo/bar", "docker.io", "fooo/bar"),
    (["ubuntu", "library/ubuntu"], "docker.io/library/ubuntu", "ubuntu", "docker.io", "library/ubuntu"),
    (
        ["nonlibrary/ubuntu"],
        "docker.io/nonlibrary/ubuntu",
        "nonlibrary/ubuntu",
        "docker.io",
        "nonlibrary/ubuntu",
    ),
    (["other/library"], "docker.io/other/library", "other/library", "docker.io", "other/library"),
    (
        ["127.0.0.1:8000/private/moonbase"],
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000",
        "private/moonbase",
    ),
    (
        ["127.0.0.1:8000/privatebase"],
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000",
        "privatebase",
    ),
    (
        ["example.com/private/moonbase"],
        "example.com/private/moonbase",
        "example.com/private/moonbase",
        "example.com",
        "private/moonbase",
    ),
    (
        ["example.com/privatebase"],
        "example.com/privatebase",
        "example.com/privatebase",
        "example.com",
        "privatebase",
    ),
    (
        ["example.com:8000/private/moonbase"],
        "example.com:8000/private/moonbase",
        "example.com:8000/private/moonbase",
        "example.com:8000",
        "private/moonbase",
    ),
    (
        ["ubuntu-12.04-base", "index.docker.io/library/ubuntu-12.04-base"],
        "docker.io/library/ubuntu-12.04-base",
        "ubuntu-12.04-base",
        "docker.io",
        "library/ubuntu-12.04-base",
    ),
    (["foo", "docker.io/foo"], "docker.io/library/foo", "foo", "docker.io", "library/foo"),
    (["library/foo/bar"], "docker.io/library/foo/bar", "library/foo/bar", "docker.io", "library/foo/bar"),
    (["store/foo/bar"], "docker.io/store/foo/bar", "store/foo/bar", "docker.io", "store/foo/bar"),
    (["Foo/bar"], "Foo/bar", "Foo/bar", "Foo", "bar"),
    (["FOO/bar"], "FOO/bar", "FOO/bar", "FOO", "bar"),
    # TestNormalizedSplitHostname
    (["test.com/foo"], "test.com/foo", "test.com/foo", "test.com", "foo"),
    (["test_com/foo"], "docker.io/test_com/foo", "test_com/foo", "docker.io", "test_com/foo"),
    (["docker/migrator"], "docker.io/docker/migrator", "docker/migrator", "docker.io", "docker/migrator"),
    (["test.com:8080/foo"], "test.com:8080/foo", "test.com:8080/foo", "test.com:8080", "foo"),
    (["test-com:8080/foo"], "test-com:8080/foo", "test-com:8080/foo", "test-com:8080", "foo"),
    (["xn--n3h.com:18080/foo"], "xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
    (
        ["docker.io/library/foo/bar"],
        "docker.io/library/foo/bar",
        "library/foo/bar",
        "docker.io",
        "library/foo/bar",
    ),
    # A name Go parses without any domain: 'a.b_c' looks like a host to splitDockerDomain but isn't one.
    (["a.b_c/foo"], "a.b_c/foo", "a.b_c/foo", "", "a.b_c/foo"),
]


@pytest.mark.parametrize(("spellings", "full", "familiar", "domain", "path"), REPOSITORY_INFO)
def test_repository_info(spellings: list[str], full: str, familiar: str, domain: str, path: str) -> None:
    for text in [*spellings, full, familiar]:
        ref = ImageRef.parse(text)
        assert ref.repository == full, text
        assert ref.familiar_repository == familiar, text
        assert ref.domain == domain, text
        assert ref.path == path, text


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("nginx:1.25", (1, 25, 0, RELEASE, 0)),
        ("registry.k8s.io/kube-proxy:v1.31.0", (1, 31, 0, RELEASE, 0)),
        ("bitnami/fluentd:1.17.1-debian-12-r3", (1, 17, 1, RELEASE, 0)),
        ("example.com/agent:2.1.0-rc.1", (2, 1, 0, PRE_RC, 1)),
        (f"example.com/agent:2.0.0@{SHA256_F}", (2, 0, 0, RELEASE, 0)),
        ("localhost:5000/agent", None),  # the port is not a tag
        ("nginx", None),  # no tag: the runtime pulls latest, which names no version
        ("nginx:latest", None),
        ("nginx:stable-alpine", None),
        ("example.com/agent:main-abc123", None),
        (f"example.com/agent@{SHA256_F}", None),
    ],
)
def test_image_version(text: str, version: Key | None) -> None:
    parsed = ImageRef.parse(text).version
    assert (parsed.key if parsed else None) == version
    if parsed is not None:
        assert parsed.text == ImageRef.parse(text).tag


# --------------------------------------------------------------------------------------------------------
# Image patterns
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "image", "expected"),
    [
        # 1. No glob: normalized like a reference, then compared for equality.
        ("registry.example.com/agent", "registry.example.com/agent:2.0.0", True),
        ("registry.example.com/agent", "registry.example.com/agent-x:2.0.0", False),
        ("registry.example.com/agent", "registry.example.com/team/agent:2.0.0", False),
        ("registry.example.com/agent", "other.example.com/agent:2.0.0", False),
        ("fluent/fluent-bit", "docker.io/fluent/fluent-bit:3.0", True),
        ("fluent/fluent-bit", "fluent/fluent-bit", True),
        ("fluent/fluent-bit", "index.docker.io/fluent/fluent-bit:3.0", True),
        ("fluent/fluent-bit", "cr.fluentbit.io/fluent/fluent-bit:3.0", False),
        ("docker.io/fluent/fluent-bit", "fluent/fluent-bit:3.0", True),
        ("nginx", "nginx:1.25", True),
        ("nginx", "docker.io/library/nginx:1.25", True),
        ("nginx", f"nginx@{SHA256_F}", True),
        ("library/nginx", "nginx:1.25", True),
        ("docker.io/nginx", "nginx:1.25", True),
        ("index.docker.io/library/nginx", "nginx:1.25", True),
        ("nginx", "nginxinc/nginx-unprivileged:1.25", False),
        ("nginx", "quay.io/nginx:1.25", False),
        ("localhost:5000/agent", "localhost:5000/agent:1", True),
        ("localhost:5000/agent", "localhost:5001/agent:1", False),
        ("[::1]:5000/agent", "[::1]:5000/agent:1", True),  # '[' is literal, not a character class
        ("Registry.example.com/agent", "registry.example.com/agent", False),  # case-sensitive, as the runtime
        # 2. Glob after a literal first element: registry decided as for references, matched normalized.
        ("registry.example.com/*", "registry.example.com/agent:2.0.0", True),
        ("registry.example.com/*", "registry.example.com/team/agent:2.0.0", True),  # '*' spans '/'
        ("registry.example.com/*", "registry.example.com.evil.io/agent", False),
        ("registry.example.com/team/*", "registry.example.com/agent", False),
        ("registry.example.com/*-agent", "registry.example.com/node-agent", True),
        ("localhost:5000/*", "localhost:5000/x/y", True),
        ("fluent/*", "fluent/fluent-bit:3.0", True),
        ("fluent/*", "docker.io/fluent/fluentd", True),
        ("fluent/*", "quay.io/fluent/fluent-bit", False),
        ("fluent/*", "fluentd", False),
        ("index.docker.io/fluent/*", "fluent/fluent-bit", True),
        ("docker.io/fluent/*", "fluent/fluent-bit", True),
        ("library/*", "nginx:1.25", True),
        ("library/*", "fluent/fluent-bit", False),
        ("docker.io/library/*", "nginx", True),
        ("docker.io/library/*", "fluent/fluent-bit", False),
        ("docker.io/*", "nginx:1.25", True),
        ("docker.io/*", "fluent/fluent-bit", True),
        ("docker.io/*", "quay.io/fluent/fluent-bit", False),
        ("index.docker.io/*", "nginx", True),
        ("docker.io/nginx*", "nginx", True),
        ("docker.io/nginx*", "nginx-unprivileged", True),
        ("docker.io/nginx*", "nginxinc/nginx-unprivileged", True),
        ("docker.io/nginx*", "quay.io/nginx", False),
        # 3. Glob in the first element: not normalized; normalized or familiar repository may match.
        ("*", "nginx", True),
        ("*", "registry.example.com/team/agent:1@" + SHA256_F, True),
        ("*/fluent-bit", "fluent/fluent-bit:3.0", True),
        ("*/fluent-bit", "docker.io/fluent/fluent-bit:3.0", True),
        ("*/fluent-bit", "cr.fluentbit.io/fluent/fluent-bit:3.0", True),
        ("*/fluent-bit", "fluent/fluent-bit-plugins:3.0", False),
        ("*/fluent-bit", "fluent-bit", True),  # docker.io/library/fluent-bit
        ("*fluent-bit", "fluent-bit", True),
        ("*/nginx", "nginx", True),
        ("*/nginx", "quay.io/org/nginx", True),
        ("nginx*", "nginx:1.25", True),  # via the familiar name
        ("nginx*", "nginx-unprivileged", True),
        ("nginx*", "quay.io/nginx", False),
        ("*.example.com/agent", "registry.example.com/agent:1", True),
        ("*.example.com/agent", "example.com/agent:1", False),
        ("*.dkr.ecr.*.amazonaws.com/agent", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/agent:1", True),
        ("*.dkr.ecr.*.amazonaws.com/agent", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/agentx", False),
        ("*:5000/agent", "localhost:5000/agent", True),
        ("*/*", "nginx", True),
        ("registry-*.io/agent", "registry-eu.io/agent", True),
    ],
)
def test_image_pattern_matches(pattern: str, image: str, expected: bool) -> None:
    assert image_pattern_matches(pattern, ImageRef.parse(image)) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "image pattern is empty"),
        (
            "nginx:1.25",
            "invalid image pattern 'nginx:1.25': patterns name a repository, without tag or digest",
        ),
        ("fluent/*:3.0", "without tag or digest"),
        ("registry.example.com/agent:*", "without tag or digest"),
        (f"nginx@{SHA256_F}", "without tag or digest"),
        ("Nginx", "invalid image pattern 'Nginx': repository name 'library/Nginx' must be lowercase"),
        ("*/Agent", "invalid image pattern '*/Agent': repository name '*/Agent' must be lowercase"),
        ("registry.example.com/", "invalid image pattern 'registry.example.com/': invalid reference format"),
        ("registry.example.com//*", "invalid reference format"),
        ("https://registry.example.com/agent", "invalid reference format"),
        ("agent/*/", "invalid reference format"),
        ("-*", "invalid reference format"),
        ("a b/*", "invalid reference format"),
    ],
)
def test_image_pattern_errors(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_image_pattern(pattern)
    assert message in str(info.value)
    with pytest.raises(ValueError):
        image_pattern_matches(pattern, ImageRef.parse("nginx"))


# --------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------

_SUFFIXES: list[tuple[str, int, int]] = [
    ("", RELEASE, 0),
    ("-debian-12-r3", RELEASE, 0),
    ("+k3s1", RELEASE, 0),
    ("-eks-a1b2", RELEASE, 0),
    ("-alpine3.19", RELEASE, 0),
    ("-alpha", PRE_ALPHA, 0),
    ("-alpha.1", PRE_ALPHA, 1),
    ("-beta2", PRE_BETA, 2),
    ("-BETA.1-x", PRE_BETA, 1),
    ("-rc", PRE_RC, 0),
    ("-rc.1", PRE_RC, 1),
    ("-rc1", PRE_RC, 1),
    ("-RC.2+k3s1", PRE_RC, 2),
    ("-rc.10", PRE_RC, 10),
]


@st.composite
def versions(draw: st.DrawFn) -> tuple[str, Key]:
    """Version text with the key it must parse to."""
    nums = draw(st.lists(st.integers(0, 12), min_size=1, max_size=3))
    prefix = draw(st.sampled_from(["", "v"]))
    suffix, rank, num = draw(st.sampled_from(_SUFFIXES))
    text = prefix + ".".join(map(str, nums)) + suffix
    padded = [*nums, 0, 0][:3]
    return text, (padded[0], padded[1], padded[2], rank, num)


@given(versions())
def test_parse_gives_expected_key(case: tuple[str, Key]) -> None:
    text, key = case
    assert v(text).key == key
    assert v(text).text == text


@given(versions(), versions(), versions())
def test_ordering_is_a_total_order_consistent_with_key(
    a_case: tuple[str, Key],
    b_case: tuple[str, Key],
    c_case: tuple[str, Key],
) -> None:
    a, b, c = v(a_case[0]), v(b_case[0]), v(c_case[0])
    for x, y in [(a, b), (b, c), (a, c)]:
        assert [x < y, x == y, x > y].count(True) == 1  # trichotomy
        assert (x < y) == (x.key < y.key)
        assert (x == y) == (x.key == y.key)
        assert (x <= y) == (x.key <= y.key)
        assert (x == y) <= (hash(x) == hash(y))
    if a <= b and b <= c:
        assert a <= c
    assert [x.key for x in sorted([a, b, c])] == sorted([a.key, b.key, c.key])


_OPS: dict[str, Callable[[Key, Key], bool]] = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(_OPS)), versions(), st.sampled_from(["", " "])),
        min_size=1,
        max_size=4,
    ),
    versions(),
)
def test_range_contains_agrees_with_each_comparator(
    comparators: list[tuple[str, tuple[str, Key], str]],
    candidate: tuple[str, Key],
) -> None:
    text = ",".join(f"{space}{op}{space}{bound[0]}{space}" for op, bound, space in comparators)
    r = VersionRange.parse(text)
    assert [(op, b.key) for op, b in r.comparators] == [(op, bound[1]) for op, bound, _ in comparators]
    expected = all(_OPS[op](candidate[1], bound[1]) for op, bound, _ in comparators)
    assert r.contains(v(candidate[0])) is expected


@given(st.text(max_size=40))
def test_version_parse_never_raises(text: str) -> None:
    parsed = Version.parse(text)
    assert parsed is None or parsed.text == text


@given(st.text(alphabet=st.sampled_from("aZ0-_.:/@[]%*+ \n\u00e9"), max_size=40))
def test_image_ref_parse_raises_only_value_error(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except ValueError as e:
        assert repr(text[:64]) in str(e)
    else:
        assert ImageRef.parse(ref.repository).repository == ref.repository


_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
# No '.' in the first element: after a Docker Hub domain, `x.y/z` would read back as registry `x.y` (Go's
# familiar names have the same ambiguity; Hub namespaces can't contain '.').
_FIRST_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}(?:(?:_|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
_DOMAINS = ["", "docker.io/", "index.docker.io/", "localhost:5000/", "registry.example.com/", "[::1]:5000/"]


@given(
    st.sampled_from(_DOMAINS),
    _FIRST_COMPONENT,
    st.lists(_COMPONENT, max_size=2),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
    st.booleans(),
)
def test_normalization_is_idempotent_and_patterns_match_own_names(
    domain: str, first: str, more: list[str], tag: str | None, digested: bool
) -> None:
    components = [first, *more]
    text = domain + "/".join(components) + (f":{tag}" if tag else "") + (f"@{SHA256_F}" if digested else "")
    ref = ImageRef.parse(text)
    assert (ref.tag, ref.digest) == (tag, SHA256_F if digested else None)
    for spelling in [ref.repository, ref.familiar_repository]:
        assert ImageRef.parse(spelling).repository == ref.repository
        assert image_pattern_matches(spelling, ref)
    assert image_pattern_matches("*", ref)
    assert image_pattern_matches(f"*/{components[-1]}", ref)
    assert image_pattern_matches(f"{ref.domain}/*", ref)


# --- a new tag of a known repository: the short way equals the full parse ----------------------------


def _parsed(parse: Callable[[str], ImageRef], text: str) -> ImageRef | str:
    try:
        return parse(text)
    except ValueError as e:
        return str(e)


@pytest.mark.parametrize(
    "text",
    [
        "registry.example.com/observability/node-agent:7.52.1",
        "registry.example.com/observability/node-agent:7.52.1-00000000-0000-4000-8000-00000000000a",
        "nginx:1.25",  # docker.io/library/nginx
        "localhost:5000",  # a Docker Hub name "localhost" at tag 5000, not a host
        "localhost:5000:1",  # two tags: invalid, though "localhost:5000" parses
        "localhost:5000/agent:1.2",  # host:port, then the tag
        "registry.example.com:443/agent:v1",
        "Registry.example.com/Agent:1",  # an upper-case path: refused, naming the whole reference
        "registry.example.com/agent:",  # an empty tag
        "registry.example.com/agent:-1",  # a tag must start with a word character
        "registry.example.com/agent:" + "1" * 129,  # a tag of over 128 characters
        "a" * 64 + ":1",  # a 64-hex name is refused alone, but valid with a tag
        "registry.example.com/agent:1@sha256:" + "a" * 64,  # tag and digest: the full parse
        "registry.example.com/" + "a" * 300 + ":1",  # a path over 255 characters
        "registry.example.com/agent:1.2\n",
    ],
)
def test_a_tagged_reference_parses_as_the_full_grammar_does(text: str) -> None:
    assert _parsed(ImageRef.parse, text) == _parsed(_parse_reference, text)


@given(
    st.lists(
        st.sampled_from(
            [
                "registry.example.com",
                "localhost",
                "Host",
                "agent",
                "a",
                "-",
                ".",
                "_",
                "__",
                ":",
                "/",
                "5000",
                "1.2",
                "@",
                "x" * 64,
            ]
        ),
        min_size=1,
        max_size=8,
    ).map("".join)
)
def test_any_reference_parses_as_the_full_grammar_does(text: str) -> None:
    _parsed(
        ImageRef.parse, text.rsplit(":", 1)[0]
    )  # its name parsed first when it has one: the short way's case
    assert _parsed(ImageRef.parse, text) == _parsed(_parse_reference, text)
