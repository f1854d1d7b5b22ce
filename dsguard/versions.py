"""Image versions, kubelet versions, version ranges and image references for the versions policy.

The webhook checks that an agent image's version (from its tag) is allowed on the kubelet versions of the
nodes a DaemonSet will run on. Everything here is pure and cached: the same images, ranges and patterns
repeat on every admission request.

Image references follow github.com/distribution/reference (regexp.go, normalize.go, reference.go) as
Kubernetes and the container runtimes use it: `ParseNormalizedNamed` turns `nginx` into
`docker.io/library/nginx`, and digests are validated as opencontainers/go-digest does.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PRE_ALPHA",
    "PRE_BETA",
    "PRE_RC",
    "RELEASE",
    "ImageRef",
    "Version",
    "VersionRange",
    "image_pattern_matches",
    "validate_image_pattern",
]

# ---------------------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------------------

PRE_ALPHA = 0
PRE_BETA = 1
PRE_RC = 2
RELEASE = 3

# [0-9] not \d: Python's \d accepts any Unicode digit and int() would happily convert it.
# Suffix characters: a tag's [\w.-] plus '+' for kubelet build metadata (v1.31.4+k3s1).
_VERSION_RE = re.compile(
    r"[vV]?([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?(?:[-+]([0-9A-Za-z_.+-]+))?",
    re.ASCII,
)
_PRE_RE = re.compile(r"(alpha|beta|rc)", re.ASCII | re.IGNORECASE)
_FIRST_NUMBER_RE = re.compile(r"[0-9]+", re.ASCII)
_PRE_RANKS = {"alpha": PRE_ALPHA, "beta": PRE_BETA, "rc": PRE_RC}
# Tags are at most 128 characters; the cap keeps int() far from its 4300-digit limit and the cache small.
_MAX_VERSION_LEN = 256


@dataclass(frozen=True, order=True)
class Version:
    """A version as found in image tags and kubelet versions: an optional `v`, 1-3 numeric parts (missing
    ones are 0) and an optional suffix after `-` or `+`.

    Ordered (and compared for equality, and hashed) by `key` only; `text` is kept for messages.
    `2.1.0-debian-12-r3 == 2.1.0` and `v1.31.4+k3s1 == 1.31.4`, while suffixes starting with
    alpha/beta/rc (any case) order before the release: alpha < beta < rc < release, then by the first
    number in the suffix (`rc.1` < `rc.2`; none counts as 0).
    """

    major: int
    minor: int
    patch: int
    pre_rank: int  # PRE_ALPHA, PRE_BETA, PRE_RC or RELEASE (also any suffix that is not a pre-release)
    pre_num: int  # always 0 for RELEASE, so that suffixes which don't order are truly equal
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """The version in `text`, or None when it is not one (`latest`, `main-abc123`, `1.2.3.4`)."""
        return _parse_version(text)

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.major, self.minor, self.patch, self.pre_rank, self.pre_num)

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=4096)
def _parse_version(text: str) -> Version | None:
    if len(text) > _MAX_VERSION_LEN:
        return None
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        return None
    major, minor, patch, suffix = m.groups()
    pre_rank, pre_num = RELEASE, 0
    if suffix is not None:
        pre = _PRE_RE.match(suffix)
        if pre is not None:
            pre_rank = _PRE_RANKS[pre.group(1).lower()]
            num = _FIRST_NUMBER_RE.search(suffix)
            pre_num = int(num.group()) if num else 0
    return Version(int(major), int(minor or 0), int(patch or 0), pre_rank, pre_num, text)


_OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
# Longest operators first so '>=' is not read as '>' followed by '=1.0'.
_COMPARATOR_RE = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*", re.ASCII)
_COMPARATOR_HELP = "expected one of >=, >, <=, <, ==, != followed by a version like 1.31.0"


@dataclass(frozen=True)
class VersionRange:
    """Comma-separated comparators that must all hold, e.g. `>=1.31.0, <1.32`.

    Whitespace is allowed around comparators and after operators (`>= 1.31`). Versions in comparators
    follow `Version` (missing parts are 0, so `==1.31` means `==1.31.0`).
    """

    text: str
    comparators: tuple[tuple[str, Version], ...]
    # The comparators on Version.key, which is what Version orders by: a tuple comparison in C
    # instead of the dataclass's generated one (the version rule runs several per image per review).
    _keyed: tuple[tuple[Callable[[Any, Any], bool], tuple[int, ...]], ...] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        keyed = tuple((_OPERATORS[op], bound.key) for op, bound in self.comparators)
        object.__setattr__(self, "_keyed", keyed)

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse a range; ValueError names the first bad comparator."""
        return _parse_range(text)

    def contains(self, v: Version) -> bool:
        key = v.key
        for compare, bound in self._keyed:  # noqa: SIM110 (a loop: all() over a generator costs ~2x)
            if not compare(key, bound):
                return False
        return True

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=1024)
def _parse_range(text: str) -> VersionRange:
    if not text.strip():
        raise ValueError(f"version range {text!r} is empty: {_COMPARATOR_HELP}")
    parts = text.split(",")
    comparators: list[tuple[str, Version]] = []
    for part in parts:
        m = _COMPARATOR_RE.fullmatch(part)
        version = _parse_version(m.group(2)) if m else None
        if m is None or version is None:
            where = f" (in range {text!r})" if len(parts) > 1 else ""
            raise ValueError(f"{part.strip()!r} is not a comparator: {_COMPARATOR_HELP}{where}")
        comparators.append((m.group(1), version))
    return VersionRange(text, tuple(comparators))


# ---------------------------------------------------------------------------------------------------------
# Image references: a port of distribution/reference regexp.go + normalize.go (ParseNormalizedNamed).
# ---------------------------------------------------------------------------------------------------------

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_OPTIONAL_PORT = r"(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_DOMAIN_AND_PORT = rf"(?:{_DOMAIN_NAME}|{_IPV6}){_OPTIONAL_PORT}"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}"

# Used with fullmatch (Go's anchored ^...$; Python's '$' would also accept a trailing newline).
# re.ASCII: Go's \w is ASCII-only.
_REFERENCE_RE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_ANCHORED_NAME_RE = re.compile(rf"(?:({_DOMAIN_AND_PORT})/)?({_REMOTE_NAME})", re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)

_DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_OFFICIAL_REPO_PREFIX = "library/"
_LOCALHOST = "localhost"
_REPOSITORY_PATH_MAX = 255
# go-digest's registered algorithms and their (lower-case hex) encoded lengths.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX_RE = re.compile(r"[a-f0-9]+", re.ASCII)
# A valid reference is under ~800 characters (255 path, 128 tag, sha512 digest, a DNS name); the cap
# bounds regex backtracking on hostile input before it reaches the cache.
_MAX_REFERENCE_LEN = 1024


@dataclass(frozen=True)
class ImageRef:
    """A container image reference, normalized as Kubernetes does (`nginx` -> `docker.io/library/nginx`).

    `tag` is None when absent (the runtime then pulls `latest`, but we don't know which version that is).
    A reference may have both a tag and a digest (`repo:tag@sha256:...`); the digest decides what is pulled.
    """

    raw: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse and normalize; ValueError, naming the reference, when it is not a valid reference."""
        return _parse_image_ref(text)

    @property
    def version(self) -> Version | None:
        return _parse_version(self.tag) if self.tag else None

    @property
    def domain(self) -> str:
        """The registry host[:port], e.g. `docker.io` (empty only for odd names Go also leaves domainless)."""
        return _split_name(self.repository)[0]

    @property
    def path(self) -> str:
        """The repository path inside the registry, e.g. `library/nginx`."""
        return _split_name(self.repository)[1]

    @property
    def familiar_repository(self) -> str:
        """The repository as Docker shows it: `docker.io/` and, for official images, `library/` dropped."""
        return _familiar_name(self.repository)

    def __str__(self) -> str:
        return self.raw


class _InvalidReference(ValueError):
    """ValueError naming the reference; `why` alone lets pattern validation reword it."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid image reference {text!r}: {why}")
        self.why = why


def _split_registry(name: str) -> tuple[str, str]:
    """normalize.go splitDockerDomain without the library/ step: (registry, rest) for a name with a '/'."""
    maybe_domain, _, maybe_remote = name.partition("/")
    if maybe_domain == _LEGACY_DEFAULT_DOMAIN:
        return _DEFAULT_DOMAIN, maybe_remote
    if (
        maybe_domain == _LOCALHOST
        or "." in maybe_domain
        or ":" in maybe_domain
        # Namespaces must be lowercase, so an upper-case first element can only be a host.
        or maybe_domain.lower() != maybe_domain
    ):
        return maybe_domain, maybe_remote
    return _DEFAULT_DOMAIN, name


def _split_docker_domain(name: str) -> tuple[str, str]:
    """normalize.go splitDockerDomain: the registry, and the rest (path plus any tag/digest)."""
    if "/" not in name:
        # A single element is a familiar Docker Hub name, never host:port ("ubuntu:22.04").
        return _DEFAULT_DOMAIN, _OFFICIAL_REPO_PREFIX + name
    domain, remote = _split_registry(name)
    if domain == _DEFAULT_DOMAIN and "/" not in remote:
        remote = _OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def _validate_digest(text: str, digest: str) -> None:
    """go-digest Digest.Validate for the algorithms registered by Kubernetes' image handling."""
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise _InvalidReference(text, f"unsupported digest algorithm {algorithm!r}")
    if len(encoded) != length or not _LOWER_HEX_RE.fullmatch(encoded):
        raise _InvalidReference(text, f"{algorithm} digest must be {length} lower-case hex characters")


@functools.lru_cache(maxsize=4096)
def _parse_image_ref(text: str) -> ImageRef:
    """_parse_reference, with a short way for a new tag of a repository already parsed: the same
    agent comes at version after version, and the full parse (the reference grammar's regex, the
    domain split) costs several µs an image. `name:tag` is valid exactly when `name` is and the
    tag matches the tag grammar (the name can't take a `:` without a `/` after it, so the split is
    the grammar's own); its repository is the name's. Anything else, and any error, takes the full
    parse, so a refusal names the whole reference as before."""
    colon = text.rfind(":")
    if colon > text.rfind("/") and "@" not in text and len(text) <= _MAX_REFERENCE_LEN:
        tag = text[colon + 1 :]
        if _TAG_RE.fullmatch(tag):
            try:
                name = _parse_image_ref(text[:colon])
            except ValueError:
                return _parse_reference(text)
            if name.tag is None and name.digest is None:  # "host:5000:1" is no name plus a tag
                return ImageRef(raw=text, repository=name.repository, tag=tag, digest=None)
    return _parse_reference(text)


def _parse_reference(text: str) -> ImageRef:
    """normalize.go ParseNormalizedNamed followed by reference.go Parse."""
    if not text:
        raise _InvalidReference(text, "reference is empty")
    if len(text) > _MAX_REFERENCE_LEN:
        raise _InvalidReference(text[:64] + "...", f"longer than {_MAX_REFERENCE_LEN} characters")
    if _IDENTIFIER_RE.fullmatch(text):
        raise _InvalidReference(text, "cannot specify 64-byte hexadecimal strings as a repository name")
    domain, remainder = _split_docker_domain(text)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise _InvalidReference(text, f"repository name {remote!r} must be lowercase")
    normalized = f"{domain}/{remainder}"
    m = _REFERENCE_RE.fullmatch(normalized)
    if m is None:
        lowered = normalized.lower()
        if lowered != normalized and _REFERENCE_RE.fullmatch(lowered):
            raise _InvalidReference(text, "repository name must be lowercase")
        raise _InvalidReference(text, "invalid reference format")
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(_split_name(name)[1]) > _REPOSITORY_PATH_MAX:
        raise _InvalidReference(
            text, f"repository name must not be more than {_REPOSITORY_PATH_MAX} characters"
        )
    if digest is not None:
        _validate_digest(text, digest)
    return ImageRef(raw=text, repository=name, tag=tag, digest=digest)


@functools.lru_cache(maxsize=4096)
def _split_name(name: str) -> tuple[str, str]:
    """reference.go splitDomain: (domain, path); ("", name) when the name has no domain."""
    m = _ANCHORED_NAME_RE.fullmatch(name)
    if m is None:
        return "", name
    return m.group(1) or "", m.group(2)


@functools.lru_cache(maxsize=4096)
def _familiar_name(name: str) -> str:
    """normalize.go familiarizeName: drop docker.io/, and library/ when nothing is nested under it."""
    domain, path = _split_name(name)
    if domain != _DEFAULT_DOMAIN:
        return name
    if path.startswith(_OFFICIAL_REPO_PREFIX):
        rest = path[len(_OFFICIAL_REPO_PREFIX) :]
        if "/" not in rest:
            return rest
    return path


# ---------------------------------------------------------------------------------------------------------
# Image patterns
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImagePattern:
    # Globs tried against the normalized repository, and (when the registry is a glob) the familiar one.
    canonical: re.Pattern[str]
    familiar: re.Pattern[str] | None

    def matches(self, ref: ImageRef) -> bool:
        if self.canonical.fullmatch(ref.repository):
            return True
        return self.familiar is not None and self.familiar.fullmatch(ref.familiar_repository) is not None


def _glob_regex(*alternatives: str) -> re.Pattern[str]:
    # Only '*' is special: '[' appears literally in IPv6 registries ([::1]:5000/x), and '?' never occurs.
    parts = ("(?:" + ".*".join(re.escape(chunk) for chunk in alt.split("*")) + ")" for alt in alternatives)
    return re.compile("|".join(parts), re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> _ImagePattern:
    if not pattern:
        raise ValueError("image pattern is empty")
    # Upper case first, on the pattern itself, so the message quotes the pattern and not the probe below.
    remote = _split_docker_domain(pattern)[1].partition(":")[0]
    if remote.lower() != remote:
        raise ValueError(f"invalid image pattern {pattern!r}: repository name {remote!r} must be lowercase")
    # Check the shape with every '*' standing for one character that is valid anywhere a glob can go
    # (host, port, path component); this rejects tags, digests and malformed names.
    try:
        parsed = _parse_image_ref(pattern.replace("*", "0"))
    except _InvalidReference as e:
        raise ValueError(f"invalid image pattern {pattern!r}: {e.why}") from None
    if parsed.tag is not None or parsed.digest is not None:
        raise ValueError(
            f"invalid image pattern {pattern!r}: patterns name a repository, without tag or digest"
        )

    if "*" not in pattern:
        return _ImagePattern(_glob_regex(parsed.repository), None)
    first, slash, _ = pattern.partition("/")
    if not slash or "*" in first:
        # The registry is a glob: `*` could stand for `docker.io/library`, `quay.io/org` or nothing, so the
        # pattern can't be normalized. Match it as written against both spellings of the repository.
        return _ImagePattern(_glob_regex(pattern), _glob_regex(pattern))
    # The first element is literal, so it decides the registry exactly as for a reference.
    domain, remote = _split_registry(pattern)
    if domain == _DEFAULT_DOMAIN and "/" not in remote:
        # `docker.io/nginx*`, `docker.io/*`: normalization would add library/, but '*' may span '/', so
        # the glob is not necessarily one official-image name; accept both readings.
        return _ImagePattern(
            _glob_regex(f"{domain}/{_OFFICIAL_REPO_PREFIX}{remote}", f"{domain}/{remote}"), None
        )
    return _ImagePattern(_glob_regex(f"{domain}/{remote}"), None)


def validate_image_pattern(pattern: str) -> None:
    """Raise ValueError naming the pattern if it can never be a repository pattern (for policy loading)."""
    _compile_pattern(pattern)


def image_pattern_matches(pattern: str, ref: ImageRef) -> bool:
    """Whether the repository `pattern` selects the image `ref` (tag and digest play no part).

    `*` is the only glob character and matches any run of characters, '/' included. The rule:

    1. No `*`: the pattern is a repository name, normalized exactly like a reference and compared for
       equality: `nginx`, `library/nginx`, `docker.io/nginx` and `index.docker.io/library/nginx` all mean
       `docker.io/library/nginx`; `fluent/fluent-bit` means `docker.io/fluent/fluent-bit`.
    2. `*` after a literal first element (`fluent/*`, `registry.example.com/*`, `localhost:5000/team/*`):
       the first element decides the registry as for a reference (a host if it has '.' or ':', is
       `localhost` or has upper case; otherwise Docker Hub, with `index.docker.io` read as `docker.io`), and
       the glob is matched against the normalized repository. `fluent/*` matches
       `docker.io/fluent/fluent-bit` but not `quay.io/fluent/x`. For `docker.io/<glob without '/'>` both
       `docker.io/library/<glob>` and `docker.io/<glob>` are tried, so `docker.io/*` is all of Docker Hub
       and `docker.io/nginx*` still matches `nginx`.
    3. `*` in the first element (`*`, `*/fluent-bit`, `*.azurecr.io/agent`, `nginx*`): the registry is
       unknown, so nothing is normalized; the glob matches if it matches either the normalized repository
       (`docker.io/fluent/fluent-bit`) or the familiar one (`fluent/fluent-bit`, `nginx`).

    Comparison is case-sensitive, as in the runtime. ValueError for a pattern that is not a repository
    (see `validate_image_pattern`).
    """
    return _compile_pattern(pattern).matches(ref)
