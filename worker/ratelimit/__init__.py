"""One rate limiter for the whole fleet: every worker process on every host shares it in Redis.

The API gateway throttles per user (429 ``APIGW.0308``), whatever the number of workers, so the
budget has to live in one place. Celery's own ``rate_limit`` is a token bucket in each worker's
memory: N workers send N times the rate.

**Algorithm.** GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp) in a
Lua script, run atomically by Redis. With interval ``T = 1/rate`` and tolerance
``tau = (burst - 1) * T``, the script keeps ``tat``, the theoretical arrival time of the next
request; a request may go at ``max(tat, now) - tau``, and taking a slot moves ``tat`` on by
``T``. Any window of length ``L`` then holds at most ``burst + ceil(L / T) - 1`` requests, and
a saturated fleet gets exactly ``rate``. Times are microseconds of the Redis server's clock
(``TIME``), read inside the script: worker hosts whose clocks disagree still share one timeline.
When the slot is in the future the script *reserves* it and answers the wait: the caller sleeps
exactly that long, once, and goes. Answering "come back later" instead would wake every waiter
for every slot (N round trips per slot, slots lost to late wake-ups, and an unlucky process
could lose every race until its wait bound runs out). A wait that would exceed ``wait_max_s``
reserves nothing and raises :class:`RateLimitWaitTooLong` before sleeping.

**Keys.** One Redis hash per quota scope, ``{prefix}:rl:{project_id}:{host}:{port}``
(:func:`limiter_key`): lists, shows and deletes of one project on one API host share a budget.
Everything (GCRA state, throttle state, circuit and its 5xx window) is in that one hash, so each
script touches one key (atomic, and a single slot should the Redis ever be a cluster). Fields:
``tat`` (us), ``ep`` (epoch: bumped to void reservations), ``r0``/``rt``/``rs`` (rate after the
last 429 or idle spell, when its climb starts, and the climb's slope), ``pu`` (pause until),
``ng`` (no rate cut before), ``tn``/``tc`` (429 reports, rate cuts), ``cs``/``cu`` (circuit
state, open until), ``hs``/``ho``/``he`` (half-open sample: start, successes, server errors),
``cn``/``ck``/``cc`` (openings,
consecutive-opening streak, last close), ``w0..w9`` (the 5xx window ring). The hash expires
after ``key_ttl_s`` (default a day) without writes.

**429 and the recovery curve.** :meth:`FleetLimiter.throttled` pauses the whole fleet until
``now + (Retry-After or penalty_s)`` (the burst allowance is spent, so the fleet resumes one
request per interval), cuts the effective rate to ``max(floor, rate_now * throttle_cut)``, and
voids every outstanding reservation (sleepers check the epoch when they wake). After the pause
the rate climbs linearly, ``recovery_per_s * rate`` per second, back to the configured rate:
with the defaults (cut to 1/2, +5 % of the rate per second) full speed returns 10 s after the
pause; from the floor (5 %) it takes 19 s. That is AIMD, as in TCP: halve on a signal, add
slowly. The 429s of requests already in flight cut the rate only once: one cut per
``max(pause, throttle_guard_s)``, later ones only extend the pause. Each cut also leaves a
*ceiling* at ``ceiling_cut`` (0.9) of the rate that drew the 429 (fields ``cl``/``ct``), which
rises by ``ceiling_climb_per_s * rate`` per second (0.05 % of the rate: 200 s from 0.9 back to
full): a limit set above the gateway's would otherwise climb back into a 429 every ten seconds
(the rate benchmark, 20 % over: six 429s and 0.55 x the gateway's rate without it), and a
gateway that allows more again is found again.

**Slow start and headroom.** A request that reaches the gateway a little late, next to on-time
ones, puts ``rate + 1`` requests into one of the gateway's sliding seconds: a 429 at a limit
equal to the gateway's. Two defences. Slots are spaced ``spacing_margin`` (the service's
``SFS_CLEANUP_RATE_HEADROOM``, 2 %) wider than ``1/rate``, which absorbs about 20 ms of lateness
at any rate. And the first requests after an idle spell (no slot taken for ``idle_s``), which
are the late ones (new connections and TLS handshakes, processes and threads starting their
first job), go at ``start_fraction`` (1/2) of the rate, climbing back to it over ``start_ramp_s``
(the service's ``SFS_CLEANUP_RATE_RAMP_S``, 2 s): the rate benchmark saw one 429 in the first
second of most runs with four workers without it, and none with it. It costs a run about
``start_ramp_s / 4`` seconds at the full rate, once.

**Circuit.** It is for outages, not for brownouts. :meth:`FleetLimiter.record_result` feeds a
window of the last ``circuit_window_s`` (10) seconds. With at least ``circuit_min_calls`` (20)
results and at least ``circuit_error_ratio`` (80 %) of them server errors the circuit OPENS:
every ``acquire`` waits out a cool-down of ``circuit_cooldown_s`` (5 s). Then it is HALF-OPEN:
requests go at ``half_open_fraction`` (1/2) of the rate, without the burst, and their results
are a *sample*: once it holds ``half_open_min_calls`` (10) results, or has run
``half_open_sample_s`` (5 s) with at least one, the circuit CLOSES if the sample's error ratio is
under ``circuit_error_ratio`` and re-opens otherwise (at once, if so many errors came in that
the full sample cannot get under it: an outage costs 8 requests per cool-down). The cool-down
doubles (up to ``circuit_cooldown_max_s``, 60 s) only for what looks like an outage, a sample or
window with at least ``circuit_outage_ratio`` (95 %) errors, when it re-opens from half-open or
within that maximum of the last close. Why 80 %, and a sample rather than one trial: an outage
is (nearly) all errors, while in a brownout (half of the DELETEs answering 500, or every task's
first attempt failing and its retry succeeding) retries already deliver; a 50 % threshold opened
on such brownouts, and a single half-open trial then met one of the many failures, re-opened
with a doubled cool-down and all but stopped the run (measured: under 100 deletions in 10
minutes at a 50 % brownout where 25/s was possible). At 80 %, a 50 % brownout over 20 results
opens the circuit with a chance of about 0.6 % per check (and far less over a full window), and
when it does the sample closes it again after a few seconds at half the rate. Opening voids
reservations like a 429 does and restarts the queue at the end of the cool-down; half-open
reservations go at most ``half_open_horizon_s`` (1 s) ahead (further waiters are held and ask
again), so that the fleet is back at full rate within that time of the close. Results arriving
while it is open are ignored (they describe requests sent before). Successes are sent in small
batches (every ``result_flush_s``, 0.25 s) while the circuit is closed; a server error, and any
result while the circuit is not closed, is sent at once, together with the successes pending
before it.

**Cost.** ``acquire`` is one ``EVALSHA`` when a slot is free. A reservation longer than
``recheck_after_s`` adds one ``HGET`` of the epoch after the sleep: a shorter one is treated
like a request already in flight, which a 429 cannot recall either.

**The bank.** One ``EVALSHA`` may reserve several consecutive slots for its process (at most
``bank_slots``, 8, and none further ahead than ``recheck_after_s``: the same reservations a
429 or an opening circuit elsewhere in the fleet does not recall anyway), which the process then
hands out, earliest first, to its threads at their times; the next call asks for twice as many
while banks are used up, half as many when a banked slot expired unused. A banked slot may be
handed out up to ``bank_grace_s`` (10 ms) after its time, but never more than the burst
tolerance ``tau``: the script counts the bank's slots from at least ``now + grace``, so each is
used no earlier than tolerance allows and no later than it was counted, and the GCRA's bound
(``burst + ceil(L / T) - 1`` in any window ``L``) holds exactly. With burst 1 a banked slot is
handed out only before its time (the thread then sleeps until it). A slot not handed out in time,
or left when the job stops, is lost: that can only lower the rate. A 429 seen by this process or
a circuit that is not closed drops the bank, and nothing is banked while the circuit is not
closed. At the throughput benchmark's settings the bank saves about half of the script calls.

**Why our own Lua and not a library.** Measurably exact (the integration tests hold 20/s and
500/s across processes to the rate plus the burst in every sliding second); the server's clock
(``limits`` and ``pyrate-limiter`` read the client's); one round trip that answers the wait,
which is what sleep-until-slot needs (``limits`` has no wait, dramatiq's limiters raise); and
the 429 penalty, the recovery curve and the circuit have to live atomically in the same state,
which no library offers. Scripts are registered with redis-py's ``register_script``, whose
``EVALSHA`` falls back to loading the script on ``NOSCRIPT``: a Redis restart or a ``SCRIPT
FLUSH`` is survived (the limiter's state starts over, as after an idle day).

**Layout.** :mod:`~worker.ratelimit.limiter` (:class:`FleetLimiter`, the client side),
:mod:`~worker.ratelimit.tuning` (:class:`LimiterTuning`, the knobs above, checked, and the
figures derived from them), :mod:`~worker.ratelimit.keys` (:func:`limiter_key`),
:mod:`~worker.ratelimit.circuit` (:class:`CircuitState`), :mod:`~worker.ratelimit.errors`
(what ``acquire`` raises), :mod:`~worker.ratelimit.scripts` and ``lua/`` (the scripts).
"""

from worker.ratelimit.circuit import CircuitState
from worker.ratelimit.errors import RateLimitCancelled, RateLimitWaitTooLong
from worker.ratelimit.keys import limiter_key
from worker.ratelimit.limiter import FleetLimiter
from worker.ratelimit.scripts import script_source as _script_source  # noqa: F401 (tests' fake Redis)
from worker.ratelimit.tuning import LimiterTuning, recovery_time_s

__all__ = [
    "CircuitState",
    "FleetLimiter",
    "LimiterTuning",
    "RateLimitCancelled",
    "RateLimitWaitTooLong",
    "limiter_key",
    "recovery_time_s",
]
