"""Once-only notifications: a claim in Redis per (event, target) before sending, a mark after.

One key per (event, target), ``P:notify:{EVENT|TARGET}``:

* absent: not sent yet. A pass claims it with ``SET NX EX`` (value ``claimed:<token>``), so of
  two passes at once (a redelivered reconcile message, two scheduler workers) only one sends;
* ``claimed:<token>``: being sent. The expiry outlasts the longest send (timeouts and backoff),
  so a scheduler killed mid-send leaves a claim that lapses and the next pass sends again;
* ``sent:<time>`` or ``gave_up``: done, kept as long as the runs they speak of (and at least a
  week, longer than a nightly slot can be reported).

A send that fails gives the claim back and counts the pass in ``...:tries``; after ``max_passes``
failed passes the key becomes ``gave_up``. Both steps are Lua scripts that act only while the
claim is still this pass's own, so redis-py repeating a command whose reply was lost counts once.

The one window left: a target that accepted the event, then Redis or this process lost before
``sent`` was written. The claim lapses and the event is sent again; receivers can tell by the
event ID (``X-Sfs-Cleanup-Event``, ``event_id``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Final

import redis

from worker.ledger.keys import Keys

_CLAIMED: Final = "claimed:"
SENT: Final = "sent:"
GAVE_UP: Final = "gave_up"
#: At least this long, whatever the runs' retention: a weekly slot's event must not be sent twice.
MIN_KEEP_S: Final = 8 * 86400
#: A target's start (``P:notify:since:T``) is forgotten after this long without a pass that has
#: the target configured: adding it back later does not report every run that ended meanwhile.
SINCE_TTL_S: Final = 7 * 86400

# KEYS: 1 state, 2 tries.  ARGV: 1 claim value, 2 "sent:<time>", 3 keep (s).
# Returns 1 if the claim was still ours; 0 if it had lapsed (another pass may be sending too).
_MARK_SENT: Final = """
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[2])
return ours and 1 or 0
"""

# KEYS: 1 state, 2 tries.  ARGV: 1 claim value, 2 max passes, 3 keep (s), 4 "gave_up".
# Returns the failed passes so far (the claim is given back), -N when this one was the last
# (the key now says gave_up), or 0 when the claim was no longer ours (nothing changed).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[3])
  return -n
end
redis.call('DEL', KEYS[1])
return n
"""


@dataclass(frozen=True, slots=True)
class Claim:
    event_id: str
    target: str
    value: str  # "claimed:<token>": what only this pass wrote


class Released(Enum):
    RETRY = "retry"  # given back: a later pass sends again
    GAVE_UP = "gave_up"  # that was the last pass allowed
    LAPSED = "lapsed"  # the claim had expired: nothing changed


class Outbox:
    """The claims and marks of one fleet's notifications (one Redis, one key prefix)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, claim_ttl_s: float, keep_s: float, max_passes: int) -> None:
        self.redis = client
        self.keys = keys
        self.claim_ttl_s = max(1, int(claim_ttl_s + 0.999))
        self.keep_s = max(MIN_KEEP_S, int(keep_s))
        self.max_passes = max(1, max_passes)
        self._sent = client.register_script(_MARK_SENT)
        self._release = client.register_script(_RELEASE)

    def state(self, event_id: str, target: str) -> str | None:
        raw = self.redis.get(self.keys.notify(event_id, target))
        return raw.decode() if isinstance(raw, bytes) else raw

    def tries(self, event_id: str, target: str) -> int:
        return int(self.redis.get(self.keys.notify_tries(event_id, target)) or 0)

    def claim(self, event_id: str, target: str) -> Claim | None:
        """This pass's right to send the event to the target, or None if another pass has it or it is done."""
        claim = Claim(event_id, target, _CLAIMED + secrets.token_hex(8))
        key = self.keys.notify(event_id, target)
        if self.redis.set(key, claim.value, nx=True, ex=self.claim_ttl_s):
            return claim
        # A SET whose reply was lost and that redis-py sent again finds its own value: still ours.
        return claim if self.state(event_id, target) == claim.value else None

    def sent(self, claim: Claim, now: float | None = None) -> bool:
        """Mark the event sent to the target; False if the claim had lapsed meanwhile."""
        stamp = f"{SENT}{(time.time() if now is None else now):.3f}"
        keys = [self.keys.notify(claim.event_id, claim.target), self.keys.notify_tries(claim.event_id, claim.target)]
        return bool(self._sent(keys=keys, args=[claim.value, stamp, self.keep_s]))

    def release(self, claim: Claim) -> tuple[Released, int]:
        """Give the claim back after a failed send: the next pass tries again, up to ``max_passes``."""
        keys = [self.keys.notify(claim.event_id, claim.target), self.keys.notify_tries(claim.event_id, claim.target)]
        n = int(self._release(keys=keys, args=[claim.value, self.max_passes, self.keep_s, GAVE_UP]))
        if n == 0:
            return Released.LAPSED, self.tries(claim.event_id, claim.target)
        return (Released.GAVE_UP, -n) if n < 0 else (Released.RETRY, n)

    def since(self, target: str, now: float) -> float:
        """When the target was first configured (this call's ``now`` the first time)."""
        key = self.keys.notify_since(target)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, repr(now), nx=True, ex=SINCE_TTL_S)
        pipe.expire(key, SINCE_TTL_S)
        pipe.get(key)
        raw = pipe.execute()[-1]
        try:
            return float(raw.decode() if isinstance(raw, bytes) else raw)
        except (TypeError, ValueError):
            return now
