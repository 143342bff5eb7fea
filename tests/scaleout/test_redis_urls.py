"""Redis URLs past one server (issue 18, item 1): every form parses, bad ones name the fix,
`config show` masks every password, and the sentinels' credentials come from their settings."""

from __future__ import annotations

import pytest

from supervisor.config import load_settings
from supervisor.engine.redis_url import mask_url, parse_redis_url
from supervisor.engine.wire import WireParams
from supervisor.errors import ConfigError


def test_sentinel_url_gives_every_part() -> None:
    target = parse_redis_url("rediss+sentinel://app:p%40ss@s1:26379,[::1]:26380,s3/orders-master/2")
    assert (target.kind, target.tls, target.service, target.db) == ("sentinel", True, "orders-master", 2)
    assert target.hosts == (("s1", 26379), ("::1", 26380), ("s3", 26379))
    assert (target.username, target.password) == ("app", "p@ss")
    assert target.server_url("10.0.0.5", 6380) == "rediss://app:p%40ss@10.0.0.5:6380/2"


def test_cluster_url_gives_its_seed_nodes() -> None:
    target = parse_redis_url("redis+cluster://:secret@n1:7000,n2:7001")
    assert (target.kind, target.tls, target.hosts) == ("cluster", False, (("n1", 7000), ("n2", 7001)))
    assert (target.username, target.password) == (None, "secret")
    assert WireParams.from_url("redis+cluster://n1:7000") is None  # not one server: not the plain wire


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://s1:26379", "/service_name[/db]"),
    ("redis+sentinel://s1:26379/m/x", "is not a number"),
    ("redis+cluster://n1:7000/0", "has no path"),
    ("redis+cluster://n1:notaport", "host:port"),
    ("redis+sentinel://s1/m?socket_timeout=3", "sentinel_password"),
    ("http://localhost", "redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"),
])
def test_a_bad_url_is_refused_with_the_right_form(url: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert says in str(caught.value)
    assert url not in str(caught.value)  # the URL itself is never echoed (it may hold a password)


def test_every_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://app:masterpw@s1:26379,s2:26379/m")
    monkeypatch.setenv("JOB_SUPERVISOR_SENTINEL_USERNAME", "sentry")
    monkeypatch.setenv("JOB_SUPERVISOR_SENTINEL_PASSWORD", "sentinelpw")
    settings = load_settings()
    url = settings.redis_url_value()
    assert url is not None
    target = parse_redis_url(url)
    assert (target.sentinel_username, target.sentinel_password, target.password) == ("sentry", "sentinelpw",
                                                                                      "masterpw")
    shown = str(settings.masked())
    assert "masterpw" not in shown and "sentinelpw" not in shown
    assert "masterpw" not in mask_url(url) and "sentinelpw" not in mask_url(url)
    assert mask_url("redis+cluster://u:pw@n1:7000,n2:7000") == "redis+cluster://u:***@n1:7000,n2:7000"
    assert mask_url("redis://secret@h:1/0") == "redis://:***@h:1/0"
