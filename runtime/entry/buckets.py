"""The entry buckets on the hub: their names, configurations and the NATS subjects that members with
the ``entry`` role may publish to (runtime/mesh/hub.py grants them). The hub creates the buckets at
start, so an entry node needs no right to create or reconfigure a stream."""

from __future__ import annotations

from nats.js.api import KeyValueConfig, StorageType

ENTRY_ROLE = "entry"
KEYS_BUCKET = "cm-keys"  # key id (SHA-256 of the key, hex) -> the key's record (never the key itself)
USAGE_BUCKET = "cm-usage"  # <key id>.<YYYY-MM-DD> -> that day's requests and tokens, last use
RATE_BUCKET = "cm-rate"  # <key id> -> requests in this minute and the one before (sliding window)
LEASE_BUCKET = "cm-lease"  # <key id> -> the key's running requests (leases with expiry times)

RATE_TTL = 180.0  # a rate window is worth nothing after two minutes
LEASE_TTL = 120.0  # a lease record nobody refreshed is garbage (leases inside expire much sooner)

BUCKETS: tuple[KeyValueConfig, ...] = (
    KeyValueConfig(bucket=KEYS_BUCKET, history=1, storage=StorageType.FILE, direct=True),
    KeyValueConfig(bucket=USAGE_BUCKET, history=1, storage=StorageType.FILE, direct=True),
    KeyValueConfig(bucket=RATE_BUCKET, history=1, ttl=RATE_TTL, storage=StorageType.MEMORY, direct=True),
    KeyValueConfig(bucket=LEASE_BUCKET, history=1, ttl=LEASE_TTL, storage=StorageType.MEMORY, direct=True),
)


def entry_api_subjects() -> list[str]:
    """What an entry node publishes besides a member's subjects: writes to the four buckets, reads of
    their entries, and the watch (an ordered consumer) on the keys bucket."""
    out = ["$JS.API.INFO"]
    for b in BUCKETS:
        stream = f"KV_{b.bucket}"
        out += [
            f"$KV.{b.bucket}.>",
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}",
        ]
    keys = f"KV_{KEYS_BUCKET}"
    out += [
        f"$JS.API.CONSUMER.CREATE.{keys}",
        f"$JS.API.CONSUMER.CREATE.{keys}.>",
        f"$JS.API.CONSUMER.DELETE.{keys}.>",
        f"$JS.API.CONSUMER.INFO.{keys}.>",
        f"$JS.FC.{keys}.>",
    ]
    return out


async def ensure_entry_buckets(js) -> None:
    """Create the entry buckets that do not exist yet (the hub, as the account's admin, at start)."""
    for cfg in BUCKETS:
        try:
            await js.key_value(cfg.bucket)
        except Exception:
            await js.create_key_value(cfg)
