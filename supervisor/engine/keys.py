"""Redis key names and job ids.

Every key of one job type (its queue) lives under one hash tag, so each Lua
script touches a single Redis Cluster slot. The tag is a short hash of the
type name, and a job id starts with its type's tag, so a job can be found
from its id alone (`Client.get(id)` needs no type name):

    js:{3fa9c1}:orders.charge-payment:ready    sorted set, score = -priority*2^40 + seq
    js:{3fa9c1}:orders.charge-payment:sched    sorted set, score = run-at ms (delayed, retry)
    js:{3fa9c1}:orders.charge-payment:active   sorted set, score = lease expiry ms
    js:{3fa9c1}:orders.charge-payment:st:dead  sorted set per finished state, score = finish ms
    js:{3fa9c1}:j:3fa9c1-9b1f0e2d4c6a8e0f      hash, the job record
    js:{3fa9c1}:log:3fa9c1-9b1f0e2d4c6a8e0f    list, the job's output lines (capped)

Two type names whose tags collide simply share a slot; key names still carry
the type name, so nothing else is shared.
"""

from __future__ import annotations

import functools
import hashlib
import os

PREFIX = "js"
TYPES_KEY = f"{PREFIX}:types"  # set of every type name any instance published
TAG_LEN = 6


@functools.lru_cache(maxsize=4096)
def tag_for(name: str) -> str:
    """The hash tag of a job type's queue. A name read from Redis that is not UTF-8 (another
    program's entry in the types registry, kept as lone surrogates) hashes as its bytes."""
    return hashlib.sha1(name.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()[:TAG_LEN]


def queue_prefix(name: str) -> str:
    """Prefix of every per-type key (the Lua scripts append `ready`, `sched`, ...)."""
    return f"{PREFIX}:{{{tag_for(name)}}}:{name}:"


def new_job_id(name: str, random_hex: str | None = None) -> str:
    """A fresh job id: the type's tag, a dash, 16 random hex digits (`random_hex` when the caller
    drew them, else from os.urandom, as `secrets` does)."""
    return f"{tag_for(name)}-{random_hex or os.urandom(8).hex()}"


#: The key every transition script of a type declares (KEYS[1]), for Redis Cluster to route the call
#: to the type's slot: its enqueue counter (`:seq`), which exists from the type's first enqueue on and
#: is never deleted. Not the ready set, which is deleted when empty: while a slot migrates, Redis
#: sends a call whose declared key is absent to the new node (ASK), even though the rest of the
#: type's keys are still on the old one. (The scripts build their other keys from the prefix.)
ROUTE = "seq"


def route_key(name: str) -> str:
    """The key a script call of the type `name` declares (see ROUTE)."""
    return queue_prefix(name) + ROUTE


def job_prefix(name: str) -> str:
    """What the keys of job records of a type start with (the Lua scripts append the id)."""
    return f"{PREFIX}:{{{tag_for(name)}}}:j:"


def job_key(job_id: str) -> str:
    """The hash that holds a job's record."""
    return f"{PREFIX}:{{{tag_from_id(job_id)}}}:j:{job_id}"


def log_key(job_id: str) -> str:
    """The capped list of a job's output lines (tasks' stdout/stderr, handler output)."""
    return f"{PREFIX}:{{{tag_from_id(job_id)}}}:log:{job_id}"


def tag_from_id(job_id: str) -> str:
    """The hash tag encoded in a job id (raises ValueError on a malformed id)."""
    tag, sep, rest = job_id.partition("-")
    if not sep or len(tag) != TAG_LEN or not rest:
        raise ValueError(f"malformed job id {job_id!r}: expected '<6 hex>-<16 hex>'")
    return tag


def events_key(name: str) -> str:
    """The lifecycle event stream of one job type."""
    return queue_prefix(name) + "events"


#: Prefix of the pub/sub channel each instance listens on for cancel requests of the jobs it
#: runs (`js:cancel:<instance id>`); cancel.lua publishes there. Channels are not keys: the
#: publish touches no slot.
CANCEL_CHANNEL_PREFIX = f"{PREFIX}:cancel:"


#: The channel on which a script that wrote a release notice in a type's outbox (lua/lib.lua
#: notify_settled) names the type's key prefix, so a daemon delivers it at once.
OUTBOX_CHANNEL = f"{PREFIX}:outbox"


def cancel_channel(instance_id: str) -> str:
    """The channel on which the instance `instance_id` hears of cancels of its running jobs."""
    return CANCEL_CHANNEL_PREFIX + instance_id


def meta_key(name: str) -> str:
    """The hash where running instances publish a type's schema and policy."""
    return queue_prefix(name) + "meta"


def index_key(name: str, part: str) -> str:
    """One of a type's index keys: ready, sched, active, marker, or st:<state>."""
    return queue_prefix(name) + part
