"""Redis URLs: the one parser of every form job-supervisor takes (SPEC §13), and their masking.

- `redis://[[user]:password@]host:port[/db]`, `rediss://` (TLS), `unix:///path/redis.sock`:
  one server (left to redis-py's own URL rules).
- `redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]`
  (`rediss+sentinel://`: TLS to the master and the sentinels): the master of `service_name`,
  found through the sentinels. The credentials are the master's; the sentinels' own are the
  query options `sentinel_username` / `sentinel_password` (the settings of the same names add them).
- `redis+cluster://[[user]:password@]host:port[,host:port…]` (`rediss+cluster://`): a Redis
  Cluster, reached through any of the listed nodes.

Parsing only (no I/O, no redis-py): `supervisor.engine.broker.connect` builds the client a
target asks for, the settings validate with it, the CLI and logs print `mask_url`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode

Kind = Literal["server", "sentinel", "cluster"]

#: The forms, as an error message gives them.
FORMS = ("redis://[[user]:password@]host:port[/db], rediss:// for TLS, unix:///path/redis.sock, "
         "redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db], "
         "redis+cluster://[[user]:password@]host:port[,host:port...] (rediss+sentinel://, rediss+cluster:// for TLS)")

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("server", False), "rediss": ("server", True), "unix": ("server", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
#: Query options of a sentinel or cluster URL (a server URL's are redis-py's).
_OPTIONS = {"sentinel": {"sentinel_username", "sentinel_password", "db"}, "cluster": set[str]()}
_SECRET_OPTIONS = ("password", "sentinel_password")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL points at."""

    kind: Kind
    url: str
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seed nodes
    username: str | None = None
    password: str | None = None
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def server_url(self, host: str, port: int) -> str:
        """A redis:// (rediss://) URL of one node of this target, with its credentials and db."""
        cred = ""
        if self.password is not None or self.username:
            cred = quote(self.username or "", safe="") + (
                ":" + quote(self.password, safe="") if self.password is not None else "") + "@"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{cred}{host}:{port}/{self.db}"


def parse_redis_url(url: str) -> RedisTarget:
    """The target of `url`; ValueError naming the problem and the right form."""
    scheme, sep, rest = url.strip().partition("://")
    known = _SCHEMES.get(scheme.lower()) if sep else None
    if known is None:
        raise ValueError(f"unknown Redis URL scheme {scheme + sep if sep else url!r}; use {FORMS}")
    kind, tls = known
    if kind == "server":
        return RedisTarget("server", url, tls)
    rest, _, query = rest.partition("?")
    hostlist, _, path = rest.partition("/")
    cred, at, hostlist = hostlist.rpartition("@")
    user, colon, password = cred.partition(":")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = options.keys() - _OPTIONS[kind]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} in a {scheme}:// URL; "
                         f"it takes {', '.join(sorted(_OPTIONS[kind])) or 'none'}")
    hosts = tuple(_host_port(h, scheme) for h in hostlist.split(","))
    service, db = _service_db(path, options.get("db"), scheme) if kind == "sentinel" else ("", 0)
    if kind == "cluster" and path.strip("/"):
        raise ValueError(f"a {scheme}:// URL has no path (a cluster has only db 0): "
                         f"{scheme}://[[user]:password@]host:port[,host:port...]")
    return RedisTarget(
        kind, url, tls, hosts,
        username=unquote(user) if at and user else None,
        password=unquote(password) if at and colon else None,
        service=service, db=db,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _host_port(text: str, scheme: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host, port = port, "26379" if "sentinel" in scheme else "6379"
    host = host.strip("[]")  # [::1]:26379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port in a {scheme}:// URL; "
                         f"write {scheme}://[[user]:password@]host:port[,host:port...]")
    return host, int(port)


def _service_db(path: str, db_option: str | None, scheme: str) -> tuple[str, int]:
    service, _, db_text = unquote(path).strip("/").partition("/")
    if not service:
        raise ValueError(f"a {scheme}:// URL names the master's service: "
                         f"{scheme}://[[user]:password@]host:port[,host:port...]/service_name[/db]")
    db_text = db_option if db_option is not None else db_text or "0"
    if not db_text.isdigit():
        raise ValueError(f"db {db_text!r} is not a number in {scheme}://.../{service}/<db>")
    return service, int(db_text)


def with_sentinel_credentials(url: str, username: str | None, password: str | None) -> str:
    """A sentinel URL with the sentinels' own credentials added as its query options (other URLs
    as they are): how the settings `sentinel_username` / `sentinel_password` reach every client."""
    if not (username or password) or not url.lower().startswith(("redis+sentinel://", "rediss+sentinel://")):
        return url
    base, _, query = url.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if username:
        options["sentinel_username"] = username
    if password:
        options["sentinel_password"] = password
    return f"{base}?{urlencode(options)}"


def mask_url(url: str) -> str:
    """The URL with every password replaced by *** (the userinfo's, and secret query options)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, q, query = rest.partition("?")
    head, slash, path = rest.partition("/")
    if "@" in head:
        cred, _, hosts = head.rpartition("@")
        user, colon, _ = cred.partition(":")
        head = f"{user}:***@{hosts}" if colon else f":***@{hosts}"  # redis://secret@host: taken as the secret
    if query:
        options = [(k, "***" if k in _SECRET_OPTIONS else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(options, safe="*")
    return f"{scheme}://{head}{slash}{path}{q}{query}"


__all__ = ["FORMS", "RedisTarget", "mask_url", "parse_redis_url", "with_sentinel_credentials"]
