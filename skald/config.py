"""Settings: defaults < TOML file < ``SKALD_*`` environment < command-line flags.

Every setting is one field of :class:`Settings`. Its environment name is
``SKALD_`` + the upper-cased field name (``log_level`` -> ``SKALD_LOG_LEVEL``).
In TOML a field may be written flat (``log_level = "info"``) or in a section
whose name is the field's prefix (``[log] level = "info"``); the ``[server]``
section holds the bare fields (``[server] port = 8080``). See ``ops/skald.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from skald.errors import BadRequest


class ConfigError(BadRequest):
    code = "config_error"
    title = "Invalid configuration"


@dataclasses.dataclass(frozen=True)
class Settings:
    # server
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./data")
    grace_seconds: float = 10.0
    request_head_timeout: float = 10.0  # seconds to receive a request head (0 = unbounded)
    max_connections: int = 4096  # open client connections; beyond, new ones are answered 503
    listen_backlog: int = 4096  # connections the kernel queues before accept (capped by net.core.somaxconn)
    hypercorn_patches: bool = True  # skald's patches to hypercorn's trio worker (docs/hypercorn.md)
    hypercorn_patches_skip: str = ""  # comma-separated patches to leave out (docs/hypercorn.md)
    # logging
    log_level: str = "info"
    log_format: str = "console"  # console | json
    tracemalloc: bool = False  # debug only: trace allocations, a growth report on SIGUSR1 (docs/operations.md)
    malloc_arena_max: int = 2  # glibc malloc arenas shared by all threads (0 = glibc's default, 8 per core)
    malloc_trim_seconds: float = 30.0  # give freed native memory back this often (0 = never)
    # runtime
    idle_timeout: float = 300.0
    mailbox_size: int = 1024
    max_batch: int = 256
    read_pool_size: int = 2  # read-only connections per document at most (opened on demand)
    connection_idle_seconds: float = 30.0  # an open document's SQLite connection unused this long is closed
    db_writer_threads: int = 16  # OS threads running every document's write connections (docs/runtime.md)
    db_reader_threads: int = 16  # OS threads running every document's read-only connections
    sqlite_cache_kib: int = 1024  # SQLite page cache per connection at most (PRAGMA cache_size)
    synchronous: str = "NORMAL"  # NORMAL | FULL
    busy_timeout_ms: int = 5000
    # limits
    query_timeout_ms: int = 5000
    query_max_rows: int = 5000
    query_max_bytes: int = 1024 * 1024
    query_max_value_bytes: int = 16 * 1024 * 1024  # SQLITE_LIMIT_LENGTH while user SQL runs
    message_max_bytes: int = 1024 * 1024
    webhook_max_bytes: int = 1024 * 1024
    request_max_bytes: int = 2 * 1024 * 1024
    sse_heartbeat_seconds: float = 15.0
    # libSQL (Hrana) endpoint: an interactive transaction holds the document's writer at most this
    # long; an HTTP stream nobody uses for this long is closed; open streams at most.
    libsql_transaction_timeout_seconds: float = 5.0
    libsql_stream_idle_seconds: float = 10.0
    libsql_max_streams: int = 1024
    subscriber_buffer: int = 1000
    # a document with more than 64 subscribers fans out at most once per interval while messages keep
    # coming (the first after a pause goes at once): each subscriber then gets one write per interval
    # for all of them instead of one per message (docs/pubsub.md#fan-out). 0: a pass per message.
    fanout_interval_seconds: float = 0.025
    # identity
    admin_token: str | None = None
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_redirect_url: str | None = None
    oidc_owner_claim: str = "email"
    oidc_admin_claim: str = "skald_admin"
    cookie_secure: bool = True
    trusted_proxies: str = ""  # comma-separated IPs/CIDRs whose X-Forwarded-For is believed
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 100
    public_rate_per_second: float = 10.0
    public_rate_burst: int = 20
    # streams
    stream_max_wait_seconds: float = 0.0  # 0 = unbounded, as the legacy spec asks
    switch_timeout_seconds: float = 30.0
    hook_secret_key: str | None = None
    # object storage
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "skald"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    blob_gc_grace_seconds: float = 86400.0
    # MQTT adapter (off unless mqtt_port is set; 0 = a free port, reported at start)
    mqtt_port: int | None = None
    mqtt_session_expiry_seconds: float = 86400.0  # the longest a disconnected persistent session is kept
    mqtt_max_inflight: int = 64  # unacknowledged QoS 1 messages per connection, each way
    # cluster (docs/cluster.md): all unset = the single-process default, no etcd, no S3, no proxy
    cluster_node_id: str | None = None  # setting it (with etcd endpoints) joins a cluster
    cluster_advertise_url: str | None = None  # how other nodes reach this one (default: the bound address)
    cluster_etcd_endpoints: str = ""  # comma-separated etcd client URLs (its JSON gateway)
    cluster_lease_seconds: float = 2.0  # ownership lease TTL in etcd
    cluster_fence_margin_seconds: float = 0.5  # stop serving this long before the lease could expire
    cluster_s3_prefix: str = "skald"  # documents replicate to s3://{s3_bucket}/{prefix}/{db_id}/{fence}
    litestream_bin: str = "litestream"
    durability: str = "local"  # local | replicated (ack after Litestream confirms the commit is in S3)

    @property
    def service_db_path(self) -> Path:
        return self.data_dir / "_skald.db"

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"

    def document_path(self, db_id: str) -> Path:
        return self.documents_dir / f"{db_id}.sqlite3"

    @property
    def clustered(self) -> bool:
        return self.cluster_node_id is not None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = get_type_hints(Settings)


def _coerce(name: str, value: Any) -> Any:
    hint = _TYPES[name]
    text = str(value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if hint is int:
            return int(value)
        if hint == (int | None):
            return None if value is None or text.strip().lower() in {"", "none", "off"} else int(value)
        if hint is float:
            return float(value)
        if hint is Path:
            return Path(text)
        if value is None or text == "":
            return None if "None" in str(hint) else text
        return text
    except ValueError:
        raise ConfigError(f"setting {name!r}: cannot read {value!r} as {hint}") from None


def _flatten_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                name = sub if key == "server" else f"{key}_{sub}"
                flat[name.replace("-", "_")] = subvalue
        else:
            flat[key.replace("-", "_")] = value
    return flat


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from every layer.

    ``config_file`` defaults to ``$SKALD_CONFIG`` when set. Unknown TOML keys
    and unreadable values raise :class:`ConfigError` (a typo must not be
    silently ignored). ``overrides`` are command-line flags; ``None`` values
    mean "flag not given".
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or (Path(env["SKALD_CONFIG"]) if env.get("SKALD_CONFIG") else None)
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for name, value in _flatten_toml(raw).items():
            if name not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {name!r}")
            values[name] = _coerce(name, value)
    for name in _FIELDS:
        env_name = "SKALD_" + name.upper()
        if env_name in env:
            values[name] = _coerce(name, env[env_name])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    settings = Settings(**values)
    if settings.log_format not in {"console", "json"}:
        raise ConfigError("log_format must be 'console' or 'json'")
    if settings.synchronous.upper() not in {"NORMAL", "FULL"}:
        raise ConfigError("synchronous must be NORMAL or FULL")
    if settings.mailbox_size < 1 or settings.max_batch < 1 or settings.read_pool_size < 1:
        raise ConfigError("mailbox_size, max_batch and read_pool_size must be at least 1")
    if settings.db_writer_threads < 1 or settings.db_reader_threads < 1 or settings.sqlite_cache_kib < 1:
        raise ConfigError("db_writer_threads, db_reader_threads and sqlite_cache_kib must be at least 1")
    if settings.connection_idle_seconds <= 0:
        raise ConfigError("connection_idle_seconds must be more than 0")
    if settings.max_connections < 1 or settings.listen_backlog < 1 or settings.request_head_timeout < 0:
        raise ConfigError("max_connections and listen_backlog must be at least 1, request_head_timeout at least 0")
    if settings.mqtt_port is not None and not 0 <= settings.mqtt_port <= 65535:
        raise ConfigError("mqtt_port must be 0-65535 (0 = any free port)")
    if settings.mqtt_max_inflight < 1 or settings.mqtt_session_expiry_seconds < 0:
        raise ConfigError("mqtt_max_inflight must be at least 1, mqtt_session_expiry_seconds at least 0")
    if not 0 <= settings.fanout_interval_seconds <= 1:
        raise ConfigError("fanout_interval_seconds must be between 0 and 1")
    if settings.durability not in {"local", "replicated"}:
        raise ConfigError("durability must be 'local' or 'replicated'")
    if settings.clustered:
        if not settings.cluster_etcd_endpoints or not settings.s3_endpoint_url:
            raise ConfigError("cluster_node_id needs cluster_etcd_endpoints and s3_endpoint_url")
        if not 0 < settings.cluster_fence_margin_seconds < settings.cluster_lease_seconds:
            raise ConfigError("cluster_fence_margin_seconds must be between 0 and cluster_lease_seconds")
    elif settings.durability == "replicated":
        raise ConfigError("durability = 'replicated' needs a cluster (cluster_node_id and its settings)")
    return settings
