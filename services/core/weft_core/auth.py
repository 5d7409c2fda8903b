"""Who is calling, and may they: bearer tokens, Kubernetes TokenReview, namespace roles.

Every weft service built by `weft_core.server.create_server` with an `Auth` authenticates
each call (health and reflection excepted) from its `authorization: Bearer <token>`
metadata and authorises it by the table of `Rule`s its service passes in
(`weft_api.access` for weft-api): the role the method needs and where in the request the
namespace is. A served method without a rule stops the server at start-up, so a new RPC
cannot be left open by accident.

Roles, per namespace and cumulative:

    viewer   reads: Get/List/Watch, logs, explain, blobs referenced by that namespace
    runner   viewer + CreateRun, CancelRun, ResumeRun, PutBlob
    admin    runner + pipelines create/delete

A binding to namespace `*` holds in every namespace (`"*": admin` is the cluster-wide admin).

Token file (YAML, `--auth-tokens-file`), re-read whenever it changes on disk (a rotated
Kubernetes Secret, an edited file) without a restart; a file that no longer parses keeps
the previous tokens and logs why:

    tokens:
      - subject: alice
        sha256: 9f86d08...        # hex sha256 of the token: `weft_core.auth.token_digest`
        roles: {team-a: runner, team-b: viewer}
      - subject: ops
        sha256: 60303ae...
        roles: {"*": admin}

Kubernetes ServiceAccount tokens (`--auth-kube-roles-file`) are checked through the
TokenReview API and mapped to roles by user name or group:

    bindings:
      - user: system:serviceaccount:ci:builder
        roles: {team-a: runner}
      - group: system:serviceaccounts:weft
        roles: {"*": admin}

Span tokens (`--span-token-key-file`, weft-tracer only; `weft_core.span_tokens`): a token
an executor minted for one step attempt authenticates as a principal with no namespace
role and a `span_grant` (one run's trace). Only a `Rule` with `span_tokens=True` admits
it (the tracer's OTLP Export); every other method refuses it with PERMISSION_DENIED, and
a service without the key refuses it as UNAUTHENTICATED without asking TokenReview.

This module never stores, logs or returns a token in clear: only its sha256 is kept
(the TokenReview cache is keyed by it too), and error messages name subjects, never tokens.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weft_core import span_tokens
from weft_core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from weft_core.spec import DEFAULT_NAMESPACE, check_dns_label

log = logging.getLogger(__name__)

#: The namespace key of a binding that holds in every namespace.
EVERY_NAMESPACE = "*"
#: Seconds a TokenReview answer is reused before the apiserver is asked again.
TOKEN_REVIEW_TTL = 60.0
#: Most TokenReview answers kept (least recently checked dropped first).
TOKEN_REVIEW_CACHE = 4096
#: Longest bearer token accepted (a ServiceAccount JWT is ~1 KiB).
MAX_TOKEN_CHARS = 16 * 1024


class Role(enum.IntEnum):
    """A role in a namespace; a higher role includes every lower one."""

    VIEWER = 1
    RUNNER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object, where: str) -> Role:
        names = ", ".join(r.label for r in cls)
        if not isinstance(value, str) or value.upper() not in cls.__members__:
            raise ValueError(f"{where}: {value!r} is not a role; use one of {names}")
        return cls[value.upper()]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        subject: Who it is (a token file subject, or a Kubernetes user name).
        roles: Role by namespace; `*` holds in every namespace.
        via: How it was authenticated ("token", "kubernetes", "span-token").
        span_grant: For a span token, the one trace it may export spans of (and no roles).
    """

    subject: str
    roles: Mapping[str, Role]
    via: str = "token"
    span_grant: span_tokens.SpanGrant | None = None

    def role_in(self, namespace: str) -> Role | None:
        """The highest role the caller holds in `namespace` (a `*` binding included)."""
        found = [r for r in (self.roles.get(namespace), self.roles.get(EVERY_NAMESPACE)) if r is not None]
        return max(found) if found else None

    def may(self, role: Role, namespace: str) -> bool:
        held = self.role_in(namespace)
        return held is not None and held >= role

    @property
    def cluster_admin(self) -> bool:
        return self.roles.get(EVERY_NAMESPACE) == Role.ADMIN

    def describe_roles(self) -> str:
        return ", ".join(f"{ns}={role.label}" for ns, role in sorted(self.roles.items())) or "no roles"


#: The caller of the call being served (None when the service runs without auth).
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("weft_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the call being served, or None without auth."""
    return _current.get()


def current_subject() -> str:
    """Who made the call being served, for `created_by`-style fields ("" without auth)."""
    principal = _current.get()
    return principal.subject if principal is not None else ""


def token_digest(token: str) -> str:
    """The lower-case hex sha256 of a token, as the token file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_roles(raw: object, where: str) -> dict[str, Role]:
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f'{where}: expected a mapping of namespace to role, e.g. {{team-a: runner, "*": viewer}}')
    return {str(ns): Role.parse(role, f"{where}.{ns}") for ns, role in raw.items()}


def parse_token_file(text: str, source: str) -> dict[str, Principal]:
    """Principals of a token file by the sha256 of their token.

    Raises:
        ValueError: Naming the entry and field that is wrong.
    """
    document = yaml.safe_load(text) or {}
    entries = document.get("tokens") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a top-level `tokens:` list (see weft_core.auth)")
    principals: dict[str, Principal] = {}
    for i, entry in enumerate(entries):
        where = f"{source}: tokens[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping with subject, sha256 and roles")
        subject, digest = entry.get("subject"), entry.get("sha256")
        if not isinstance(subject, str) or not subject:
            raise ValueError(f"{where}.subject: required, who the token belongs to")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(
                f"{where}.sha256: expected the 64 lower-case hex digits of the token's sha256 "
                "(`printf %s TOKEN | sha256sum`), never the token itself"
            )
        if digest in principals:
            raise ValueError(f"{where}.sha256: the same token is listed twice ({principals[digest].subject})")
        principals[digest] = Principal(subject, _parse_roles(entry.get("roles"), f"{where}.roles"), "token")
    return principals


def render_token_file(entries: Iterable[tuple[str, str, Mapping[str, Role | str]]]) -> str:
    """A token file for (subject, token, roles) entries; only the tokens' sha256 is written."""
    tokens = [
        {
            "subject": subject,
            "sha256": token_digest(token),
            "roles": {ns: (r.label if isinstance(r, Role) else r) for ns, r in roles.items()},
        }
        for subject, token, roles in entries
    ]
    return yaml.safe_dump({"tokens": tokens}, sort_keys=False)


class _WatchedFile:
    """A YAML file parsed again whenever its identity (inode, size, mtime) changes.

    A file that stops parsing keeps the last good value: locking every caller out because
    of a typo in a rotated Secret would be worse than serving the previous version a while.
    """

    def __init__(self, path: Path, parse: Callable[[str, str], Any]) -> None:
        self.path = path
        self._parse = parse
        self._stamp: tuple[int, int, int] | None = None
        self._bad_stamp: tuple[int, int, int] | None = None
        self.value: Any = None
        self.reload(initial=True)

    def _identity(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows symlinks: a Secret volume swaps its ..data link
        return st.st_ino, st.st_size, st.st_mtime_ns

    def reload(self, *, initial: bool = False) -> None:
        try:
            stamp = self._identity()
        except OSError as error:
            if initial:
                raise ValueError(f"{self.path}: cannot read ({error.strerror})") from None
            if self._bad_stamp != (0, 0, 0):
                log.error("%s cannot be read (%s); keeping the previous version", self.path, error.strerror)
                self._bad_stamp = (0, 0, 0)
            return
        if stamp == self._stamp or stamp == self._bad_stamp:
            return
        try:
            value = self._parse(self.path.read_text(), str(self.path))
        except (OSError, ValueError, yaml.YAMLError) as error:
            if initial:
                raise ValueError(str(error)) from None
            log.error("%s changed but is invalid, keeping the previous version: %s", self.path, error)
            self._bad_stamp = stamp
            return
        if not initial:
            log.info("re-read %s", self.path)
        self.value, self._stamp, self._bad_stamp = value, stamp, None


class TokenFile:
    """Bearer tokens from a token file (see the module docstring), re-read on change."""

    def __init__(self, path: Path) -> None:
        """Reads `path`.

        Raises:
            ValueError: The file is missing or malformed (the message says where).
        """
        self._file = _WatchedFile(path, parse_token_file)

    def lookup(self, token: str) -> Principal | None:
        """The principal a token belongs to, or None."""
        self._file.reload()
        principals: dict[str, Principal] = self._file.value
        digest = token_digest(token)
        principal = principals.get(digest)
        # The dict lookup is on a hash of the token, so its timing says nothing about the
        # token; the compare below keeps that true should the lookup ever change.
        if principal is not None and hmac.compare_digest(digest, token_digest(token)):
            return principal
        return None


@dataclass(frozen=True)
class KubeBinding:
    """Roles given to a Kubernetes user name or to every member of a group."""

    roles: Mapping[str, Role]
    user: str = ""
    group: str = ""


def parse_kube_roles(text: str, source: str) -> list[KubeBinding]:
    """The bindings of a Kubernetes roles file (see the module docstring).

    Raises:
        ValueError: Naming the entry and field that is wrong.
    """
    document = yaml.safe_load(text) or {}
    entries = document.get("bindings") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a top-level `bindings:` list (see weft_core.auth)")
    bindings = []
    for i, entry in enumerate(entries):
        where = f"{source}: bindings[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping with user or group, and roles")
        user, group = str(entry.get("user") or ""), str(entry.get("group") or "")
        if bool(user) == bool(group):
            raise ValueError(f"{where}: give exactly one of user (a user name) or group")
        bindings.append(KubeBinding(_parse_roles(entry.get("roles"), f"{where}.roles"), user, group))
    return bindings


class TokenReview:
    """ServiceAccount (and other Kubernetes) tokens, checked by the apiserver's TokenReview.

    Answers are cached for `TOKEN_REVIEW_TTL` seconds by the token's sha256 so a busy
    client costs the apiserver one review a minute; a rejected token is cached too (for a
    tenth of that), so a flood of bad tokens cannot flood the apiserver.
    """

    def __init__(self, roles_file: Path, kubeconfig: Path | None = None, *, ttl: float = TOKEN_REVIEW_TTL) -> None:
        """Reads the roles file; connects to the apiserver lazily.

        Args:
            roles_file: The bindings of user names and groups to roles.
            kubeconfig: Credentials allowed to create TokenReviews; None uses the
                in-cluster ServiceAccount.
            ttl: Seconds an answer is reused.

        Raises:
            ValueError: The roles file is missing or malformed.
        """
        self._bindings = _WatchedFile(roles_file, parse_kube_roles)
        self.kubeconfig = kubeconfig
        self.ttl = ttl
        self._api: Any = None
        self._cache: dict[str, tuple[float, tuple[str, tuple[str, ...]] | None]] = {}

    def _authentication_api(self) -> Any:
        if self._api is None:
            # Imported lazily: the kubernetes client costs ~330 ms to import, and most
            # installations never use TokenReview.
            from kubernetes import client, config

            configuration = client.Configuration()
            if self.kubeconfig is not None:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(self.kubeconfig), client_configuration=configuration
                )
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            self._api = client.AuthenticationV1Api(client.ApiClient(configuration))
        return self._api

    def _review(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        from kubernetes import client

        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        answer = self._authentication_api().create_token_review(review)
        status = answer.status
        if status is None or not status.authenticated or status.user is None:
            return None
        return str(status.user.username), tuple(status.user.groups or ())

    async def lookup(self, token: str) -> Principal | None:
        """The principal of a Kubernetes token, or None if the apiserver rejects it or no
        binding gives its user a role.

        Raises:
            Unauthenticated: The apiserver cannot be asked (the message says why).
        """
        digest = token_digest(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            identity = cached[1]
        else:
            try:
                identity = await asyncio.to_thread(self._review, token)
            except Exception as error:  # any client or transport failure: say so, never the token
                log.warning("TokenReview failed: %s: %s", type(error).__name__, error)
                raise Unauthenticated(
                    "the Kubernetes token could not be checked (TokenReview failed); retry, or use a weft token"
                ) from None
            if len(self._cache) >= TOKEN_REVIEW_CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[digest] = (now + (self.ttl if identity else self.ttl / 10), identity)
        if identity is None:
            return None
        user, groups = identity
        self._bindings.reload()
        roles: dict[str, Role] = {}
        for binding in self._bindings.value:
            if (binding.user and binding.user == user) or (binding.group and binding.group in groups):
                for ns, role in binding.roles.items():
                    roles[ns] = max(role, roles.get(ns, role))
        return Principal(user, roles, "kubernetes") if roles else None


class SpanTokenKey:
    """The key(s) span tokens are minted and verified with (`weft_core.span_tokens`), from a
    file re-read whenever it changes, like the token file."""

    def __init__(self, path: Path) -> None:
        """Reads `path`.

        Raises:
            ValueError: The file is missing or holds no valid key (the message says where).
        """
        self._file = _WatchedFile(path, span_tokens.parse_keys)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key that verifies; the first one mints."""
        self._file.reload()
        keys: tuple[bytes, ...] = self._file.value
        return keys

    def mint(self, run: str, trace_id: int, expires_at: int) -> str:
        return span_tokens.mint(self.keys[0], run, trace_id, expires_at)

    def lookup(self, token: str, now: float | None = None) -> Principal | None:
        """The principal of a valid span token (no roles, its grant), or None."""
        grant = span_tokens.verify(self.keys, token, time.time() if now is None else now)
        if grant is None:
            return None
        return Principal(f"span token of {grant.run}", {}, "span-token", grant)


class Authenticator:
    """Turns a call's metadata into a Principal: a span token by its key, else the token
    file first, then TokenReview."""

    def __init__(
        self,
        tokens: TokenFile | None = None,
        token_review: TokenReview | None = None,
        span_key: SpanTokenKey | None = None,
    ) -> None:
        if tokens is None and token_review is None:
            raise ValueError("an Authenticator needs a token file, a TokenReview, or both")
        self.tokens = tokens
        self.token_review = token_review
        self.span_key = span_key

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        """The caller of a call with this metadata.

        Raises:
            Unauthenticated: No bearer token, or one no source knows.
        """
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise Unauthenticated(
                'no credentials: send the metadata "authorization: Bearer <token>" '
                "(weft --token / WEFT_TOKEN, grpcurl -H 'authorization: Bearer ...')"
            )
        value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated('malformed authorization metadata: expected "Bearer <token>"')
        if span_tokens.looks_like_span_token(token):
            # Never sent to TokenReview: the apiserver has no business seeing it.
            if self.span_key is None:
                raise Unauthenticated(
                    "a span token is accepted only by weft-tracer's OTLP Export (the tracer that shares the "
                    "executor's span token key); use a weft token here"
                )
            principal = self.span_key.lookup(token)
            if principal is None:
                raise Unauthenticated(
                    "the span token is not valid (forged, altered, minted with another key, or expired); "
                    "each attempt gets a fresh one from its executor"
                )
            return principal
        if self.tokens is not None:
            principal = self.tokens.lookup(token)
            if principal is not None:
                return principal
        if self.token_review is not None:
            principal = await self.token_review.lookup(token)
            if principal is not None:
                return principal
        raise Unauthenticated("the bearer token is not valid (unknown, revoked or expired); ask for a new one")


#: Extracts the namespace a request acts in; raises InvalidArgument naming the field.
NamespaceOf = Callable[[Any], str]


@dataclass(frozen=True)
class Rule:
    """What one RPC needs: a role, in the namespace `namespace_of` finds in the request.

    `namespace_of=None` means the role is needed in every namespace (`*`). For a method
    with a request stream, `namespace_of` reads the first message. `span_tokens=True`
    admits a span token too (its service must then confine it to its grant's trace).
    """

    role: Role
    namespace_of: NamespaceOf | None = None
    span_tokens: bool = False


@dataclass(frozen=True)
class Auth:
    """How a server authenticates and authorises calls.

    Attributes:
        authenticator: Finds the caller.
        rules: The rule of every served method, by full method name (`/weft.v1.RunService/GetRun`).
    """

    authenticator: Authenticator
    rules: Mapping[str, Rule] = field(default_factory=dict)

    def with_rules(self, rules: Mapping[str, Rule]) -> Auth:
        return Auth(self.authenticator, {**self.rules, **rules})

    def check_covers(self, methods: Iterable[str]) -> None:
        """Raises ValueError naming every served method without a rule."""
        missing = sorted(set(methods) - set(self.rules))
        if missing:
            raise ValueError(f"no access rule for {', '.join(missing)}: add one to the service's rule table")

    def authorize(self, principal: Principal, method: str, request: Any) -> None:
        """Raises PermissionDenied unless `principal` holds the role `method` needs.

        Raises:
            InvalidArgument: The request's namespace field is malformed.
            PermissionDenied: Naming the role and namespace needed.
        """
        rule = self.rules.get(method)
        if rule is None:  # create_server refuses this; kept closed should a rule go missing
            raise PermissionDenied(f"{method} has no access rule; nobody may call it")
        if principal.span_grant is not None:
            if rule.span_tokens:
                return
            raise PermissionDenied(
                f"a span token may only export spans of its run's trace ({principal.span_grant.run}); "
                f"it cannot call {method.lstrip('/')}: use a weft token with a role"
            )
        namespace = rule.namespace_of(request) if rule.namespace_of is not None else EVERY_NAMESPACE
        if principal.may(rule.role, namespace):
            return
        where = (
            "every namespace (a cluster-wide binding)" if namespace == EVERY_NAMESPACE else f'namespace "{namespace}"'
        )
        raise PermissionDenied(
            f"{principal.subject} may not call {method.lstrip('/')}: it needs the role {rule.role.label} in {where}; "
            f"{principal.subject} has {principal.describe_roles()}"
        )


def enter_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    """Makes `principal` the caller of the current task (the server's auth interceptor)."""
    return _current.set(principal)


def leave_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


def require_namespace_field(value: str, field_name: str) -> str:
    """A namespace given as a bare name (blob requests); "" is the default namespace."""
    if not value:
        return DEFAULT_NAMESPACE
    if len(value) > 63:
        raise InvalidArgument(f"{field_name}: a namespace has at most 63 characters", field=field_name)
    return check_dns_label(value, field_name)


def load_auth(
    tokens_file: Path | None,
    kube_roles_file: Path | None,
    kubeconfig: Path | None = None,
    span_token_key_file: Path | None = None,
) -> Auth | None:
    """The Auth of a service's settings, or None when neither token source is configured
    (a span token key alone authenticates nobody: without auth every caller is served).

    Raises:
        ValueError: A configured file is missing or malformed.
    """
    if tokens_file is None and kube_roles_file is None:
        return None
    tokens = TokenFile(tokens_file) if tokens_file is not None else None
    review = TokenReview(kube_roles_file, kubeconfig) if kube_roles_file is not None else None
    span_key = SpanTokenKey(span_token_key_file) if span_token_key_file is not None else None
    return Auth(Authenticator(tokens, review, span_key))
