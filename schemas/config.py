"""The goalstream config file (TOML): workspaces and their credentials, goals, webhooks.

Loaded once at a service's entry point, validated with pydantic (unknown keys are
errors that name the key), then passed down. Credentials are ``SecretStr``; any
credential but a webhook signing secret may be given as ``"sha256:<hex>"``. Incoming
credentials are matched by ``Credentials``: hashed with SHA-256 and compared with
``hmac.compare_digest`` against every workspace, so the time taken does not depend on
how much of a secret matched.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

CREDENTIAL_FIELDS = (
    "traitly_token",
    "triggerly_api_token",
    "retainly_key",
    "retainly_secret",
    "customerio_site_id",
    "customerio_api_key",
    "segment_write_key",
    "admin_token",
)


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message names the bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Workspace(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    traitly_token: SecretStr | None = None
    triggerly_api_token: SecretStr | None = None
    retainly_key: SecretStr | None = None
    retainly_secret: SecretStr | None = None
    customerio_site_id: SecretStr | None = None
    customerio_api_key: SecretStr | None = None
    segment_write_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    # Records about a suppressed person (``goalstream forget --suppress``): "refuse" answers
    # 403 in the caller's dialect; "discard" answers as if accepted. Neither is ever stored.
    suppressed_records: Literal["refuse", "discard"] = "refuse"

    @field_validator(*CREDENTIAL_FIELDS)
    @classmethod
    def _hash_form(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            raw = v.get_secret_value()
            if not raw:
                raise ValueError("must not be empty")
            if raw.startswith("sha256:"):
                digest = raw[len("sha256:") :]
                if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                    raise ValueError("a hashed secret is 'sha256:' followed by 64 hex digits")
        return v


class Action(_Strict):
    event_name: str = Field(min_length=1)
    message_plaintext: str = ""
    message_html: str = ""


class Goal(_Strict):
    workspace: str
    name: str = Field(min_length=1)
    window_days: int = Field(default=30, ge=1, le=3650)
    target_event: str = Field(min_length=1)
    actions: list[Action] = Field(default_factory=list)


class Webhook(_Strict):
    workspace: str
    url: str = Field(pattern=r"^https?://")
    objects: list[Literal["goal-propensity-change", "recommended-next-actions"]] = Field(
        default_factory=lambda: ["goal-propensity-change", "recommended-next-actions"]
    )
    # One signing secret, or several during a rotation (each signs; receivers accept any).
    secret: SecretStr | list[SecretStr]

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr | list[SecretStr]) -> SecretStr | list[SecretStr]:
        for one in v if isinstance(v, list) else [v]:
            if not one.get_secret_value().startswith("whsec_"):
                raise ValueError("a Standard Webhooks signing secret starts with 'whsec_'")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one signing secret")
        return v

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.secret if isinstance(self.secret, list) else [self.secret])]

    @property
    def endpoint_id(self) -> str:
        """Stable across restarts and config reordering: the workspace and URL."""
        return "ep_" + hashlib.sha256(f"{self.workspace}\n{self.url}".encode()).hexdigest()[:16]


class Dispatcher(_Strict):
    allow_private_targets: bool = False
    timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    )


class Admin(_Strict):
    """``[admin]``: the operator token sees every workspace in the admin SQL endpoint and
    trains every goal; a workspace's own ``admin_token`` sees only that workspace."""

    operator_token: SecretStr | None = None

    @field_validator("operator_token")
    @classmethod
    def _hash_form(cls, v: SecretStr | None) -> SecretStr | None:
        return Workspace._hash_form(v)


class GoalstreamConfig(_Strict):
    admin: Admin = Field(default_factory=Admin)
    workspaces: list[Workspace] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    webhooks: list[Webhook] = Field(default_factory=list)
    dispatcher: Dispatcher = Field(default_factory=Dispatcher)

    @model_validator(mode="after")
    def _cross_checks(self) -> "GoalstreamConfig":
        names = [w.name for w in self.workspaces]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"workspaces: duplicate name {sorted(dupes)[0]!r}")
        known = set(names)
        for kind, items in (("goals", self.goals), ("webhooks", self.webhooks)):
            for i, item in enumerate(items):
                if item.workspace not in known:
                    raise ValueError(f"{kind}[{i}].workspace: unknown workspace {item.workspace!r}")
        seen_goals: set[tuple[str, str]] = set()
        for i, g in enumerate(self.goals):
            if (g.workspace, g.name) in seen_goals:
                raise ValueError(f"goals[{i}].name: duplicate goal {g.name!r} in workspace {g.workspace!r}")
            seen_goals.add((g.workspace, g.name))
        # A credential may identify only one workspace, else a request would be ambiguous.
        for field in CREDENTIAL_FIELDS:
            values = [w_val.get_secret_value() for w in self.workspaces if (w_val := getattr(w, field)) is not None]
            if len(values) != len(set(values)):
                raise ValueError(f"workspaces: the same {field} is given to two workspaces")
        if self.admin.operator_token is not None:
            op = _digest(self.admin.operator_token.get_secret_value())
            if any(w.admin_token is not None and _digest(w.admin_token.get_secret_value()) == op for w in self.workspaces):
                raise ValueError("admin.operator_token: must differ from every workspace's admin_token")
        return self

    def workspace(self, name: str) -> Workspace | None:
        return next((w for w in self.workspaces if w.name == name), None)

    def goals_of(self, workspace: str) -> list[Goal]:
        return [g for g in self.goals if g.workspace == workspace]


DEV_CONFIG = GoalstreamConfig(
    workspaces=[
        Workspace(
            name="dev",
            traitly_token=SecretStr("dev_traitly_token"),
            triggerly_api_token=SecretStr("dev_triggerly_token"),
            retainly_key=SecretStr("dev_retainly_key"),
            retainly_secret=SecretStr("dev_retainly_secret"),
            customerio_site_id=SecretStr("dev_site"),
            customerio_api_key=SecretStr("dev_cio_key"),
            segment_write_key=SecretStr("dev_write_key"),
            admin_token=SecretStr("dev_admin_token"),
        )
    ]
)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, origin: str = "<config>") -> GoalstreamConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    try:
        return GoalstreamConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid config:\n{_format_errors(exc)}") from None


def load_config(path: Path | None) -> GoalstreamConfig:
    """Read the config file at ``path``; with None, the built-in dev defaults."""
    if path is None:
        return DEV_CONFIG
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return parse_config(text, str(path))


def _digest(raw: str) -> bytes:
    if raw.startswith("sha256:"):
        return bytes.fromhex(raw[len("sha256:") :])
    return hashlib.sha256(raw.encode()).digest()


def presented_bytes(presented: str | bytes) -> bytes:
    """A presented credential as the bytes the client sent, never raising: aiohttp decodes
    non-UTF-8 header bytes with surrogateescape (``Token tk\\xff``), and a query value may
    hold a lone surrogate that surrogateescape did not make."""
    if isinstance(presented, bytes):
        return presented
    try:
        return presented.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return presented.encode("utf-8", "surrogatepass")


class Credentials:
    """Maps a presented credential to its workspace, in constant time per candidate."""

    def __init__(self, config: GoalstreamConfig):
        self._by_field: dict[str, list[tuple[bytes, str]]] = {f: [] for f in CREDENTIAL_FIELDS}
        for w in config.workspaces:
            for f in CREDENTIAL_FIELDS:
                secret = getattr(w, f)
                if secret is not None:
                    self._by_field[f].append((_digest(secret.get_secret_value()), w.name))
        op = config.admin.operator_token
        self._operator = _digest(op.get_secret_value()) if op is not None else None

    def match(self, field: str, presented: str | bytes | None) -> str | None:
        """The workspace whose ``field`` credential is ``presented``, else None.

        Compared as bytes (``presented_bytes``): a credential that is not UTF-8 simply
        matches nothing."""
        if not presented:
            return None
        digest = hashlib.sha256(presented_bytes(presented)).digest()
        found = None
        for candidate, workspace in self._by_field[field]:
            # No early exit: every candidate is compared whatever matched before.
            if hmac.compare_digest(candidate, digest):
                found = workspace
        return found

    def operator(self, presented: str | bytes | None) -> bool:
        """Is ``presented`` the configured ``[admin] operator_token``? (Constant time.)"""
        if not presented or self._operator is None:
            return False
        return hmac.compare_digest(self._operator, hashlib.sha256(presented_bytes(presented)).digest())

    def match_pair(self, fields: tuple[str, str], presented: Iterable[str | bytes | None]) -> str | None:
        """Both parts of a two-part credential must name the same workspace."""
        a, b = (self.match(f, p) for f, p in zip(fields, presented))
        return a if a is not None and a == b else None
