"""A lean Redis connection for the hot path: RESP parsed by hiredis, routed by hash slot.

The auto-pipeline sends every command of an event-loop tick in one write and
matches replies to callers in order. redis-py's pipeline object spends most
of its time per command (retry wrappers, per-reply timeouts, response
callbacks): measured here at 75k commands/s against 510k/s for this path
(docs/decisions/0006-lean-redis-path.md). redis-py stays in use for everything
off the hot path (admin reads, tests).

One connection per Redis master. A standalone server is the one-node case: it
serves every slot, so a batch goes out whole on its one connection. On Redis
Cluster (docs/decisions/0033-redis-cluster.md) each command goes to the master
of its first key's slot, from a slot map read with ``CLUSTER SLOTS``; a batch
becomes one write per master. The map is read again after a ``MOVED`` answer
(the command is sent on to the new owner at once), after a lost connection, a
``CLUSTERDOWN`` answer and every few seconds; an ``ASK`` answer (a slot being
migrated) sends the command to the target once, after ``ASKING``; a
``TRYAGAIN`` answer (a multi-key command, every money script, whose keys are not
all on one side of a slot being migrated: the keys it names that do not exist
count) is retried, a short pause apart, until the batch's migration deadline
(``migration_wait`` after it began, a second by default: switches give up on a
request after two). Those retries go on by themselves (``execute_answered``): the
other commands of the batch, other accounts on any master, are answered at once
instead of waiting with them.

A lost connection fails the commands in flight on it with ``ConnectionError``
(their callers answer "unavailable"; nothing was acknowledged to them) and the
next command reconnects. A connect that fails, a stalled server that takes the
connection but does not answer its first commands within the timeout, or an open
connection whose batch goes unanswered that long, fails that server's commands with
``ConnectionError`` alike, and the server is not dialled again for a moment
(``RECONNECT_PAUSE_S``): the other masters' part of a batch is answered as usual.
With ``wait_replicas``, each master's part of a batch ends with ``WAIT``: its callers
get their replies only once that many replicas have the batch's writes, else
"unavailable" (the writes may stand; every command the hot path sends is safe to
repeat). It waits for no more replicas
than the master has live: those a cluster's slot map lists, and of them no more
than the master's ``INFO replication`` lists online (Redis 6.2's map lists a
replica still in its first sync, which confirms nothing); a standalone server's
are read from ``INFO replication`` as often as a cluster's map, so a server whose
replicas are gone is not waited for, as on a cluster. A master not yet counted
(one first met by a redirection: a new master of a scale-out owns no slot in the
map while its first slot migrates) is waited for by as many replicas as asked, as
the first server is, until it is counted.

``write_probe`` asks each master whether it takes a write: a Redis Cluster master can
refuse them (OOM, MISCONF, READONLY) while the others take them, and a probe key on one
master would say nothing of it (decision 0013).
"""

import asyncio
import logging
import ssl
import time
from binascii import crc_hqx
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ocs.backend_health import NotAnOutage, RepeatedFailure
from ocs.balances.slots import SLOTS, command_key, key_slot

# A command redirected this many times in one batch is answered "unavailable": the
# cluster is being reconfigured faster than it settles.
MAX_REDIRECTS = 5
# TRYAGAIN (a multi-key command whose keys a slot's migration has not all on one side):
# retried this long apart until the batch's migration deadline, then answered
# "unavailable".
TRYAGAIN_PAUSE_S = 0.025
# How long after its batch began a command answered TRYAGAIN is retried, unless the
# wire is told otherwise (setting ``redis_migration_wait_ms``): well under the 2 s after
# which Kamailio and Asterisk give up on a request.
MIGRATION_WAIT_S = 1.0
# A batch given up on a migrating slot is logged at most this often (per wire): each
# batch of the bucket meets it alike while the slot moves.
MIGRATING_LOG_EVERY_S = 10.0
# The slot map is read again at most this often after an error, and at least this often
# in any case (to follow replicas that come and go, for WAIT).
REFRESH_MIN_INTERVAL_S = 0.1
REFRESH_EVERY_S = 5.0
# A server that could not be reached is not tried again for this long: the commands
# meanwhile fail at once instead of each waiting for a connect that hangs.
RECONNECT_PAUSE_S = 0.1
# The probe key of a master is found by trying hash tags ``{probe:N}`` in turn; a master
# holding a single slot needs about SLOTS tries, this many always suffices in practice.
_PROBE_TAG_TRIES = SLOTS * 64

log = logging.getLogger("ocs.redis")


class ClusterUnavailable(RedisConnectionError):
    """The cluster cannot serve the command now (a master is down, the cluster is
    reconfiguring): an outage, answered "unavailable", not a refused command."""


class ReconnectPaused(RedisConnectionError, RepeatedFailure):
    """A server that could not be reached moments ago, not tried again yet: the same
    failure again, not new evidence of an outage."""


class SlotMigrating(ClusterUnavailable, NotAnOutage):
    """A command still answered ``TRYAGAIN`` at its batch's deadline: its slot is being
    migrated (answered "unavailable"). Not evidence that Redis is down: every node
    answers, so the backend tracker does not start an outage for it, and each request
    it fails is logged by its protocol (once per reason a while) and counted."""


class ReplicationUnconfirmed(RedisConnectionError):
    """Fewer replicas than asked confirmed a batch's writes in time (WAIT)."""


class Retrying:
    """The commands of a batch still being retried on a migrating slot (``TRYAGAIN``),
    apart from the batch's other commands, which are answered without them: their
    places in the batch (``indexes``) and the task that answers them, in that order
    (each a reply, the error Redis answered, or ``SlotMigrating`` at the deadline)."""

    __slots__ = ("indexes", "replies")

    def __init__(self, indexes: list[int], replies: "asyncio.Task[list[Any]]") -> None:
        self.indexes = indexes
        self.replies = replies


def batch_failure(replies: Sequence[Any]) -> RedisConnectionError | None:
    """The one ``ConnectionError`` every reply of ``replies`` is, if any: the batch was not
    answered at all (its only server unreachable), rather than some commands refused."""
    if not replies:
        return None
    first = replies[0]
    if isinstance(first, RedisConnectionError) and all(r is first for r in replies):
        return first
    return None


class _Batch:
    """The replies to one write, in order; ``done`` holds them all once the last is in.

    One future per batch, not one per command: the callers' own futures are the
    auto-pipeline's, and a future (and a gather over them) per command cost more
    than parsing the replies did.
    """

    __slots__ = ("done", "expected", "replies")

    def __init__(self, expected: int, done: "asyncio.Future[list[Any]]") -> None:
        self.expected = expected
        self.done = done
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[_Batch] = deque()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection's transport is a Transport; the base class's signature is wider.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        gets = self.reader.gets
        while True:
            reply = gets()
            if reply is False:
                return
            batch = waiting[0]
            replies = batch.replies
            replies.append(reply)
            if len(replies) == batch.expected:
                waiting.popleft()
                if not batch.done.done():  # else its caller gave up (timed out)
                    batch.done.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        # The replies already in stand; each command still unanswered gets the error.
        while self.waiting:
            batch = self.waiting.popleft()
            batch.replies += [error] * (batch.expected - len(batch.replies))
            if not batch.done.done():
                batch.done.set_result(batch.replies)
        if not self.lost.done():
            self.lost.set_result(None)


def _usable(protocol: _Protocol | None) -> bool:
    """Whether a connection can take commands: open, and not closing (a connection closed
    after a timeout has its loss reported a moment later)."""
    if protocol is None or protocol.lost.done() or protocol.transport is None:
        return False
    return not protocol.transport.is_closing()


def _send(protocol: _Protocol, commands: Sequence[Sequence[Any]]) -> "asyncio.Future[list[Any]]":
    """Write ``commands`` at once; the future holds every reply (or error) in order."""
    # The connection's own loop: asyncio's get_running_loop is a getpid() system call, and
    # this runs once per batch.
    done: asyncio.Future[list[Any]] = protocol.loop.create_future()
    if not commands:
        done.set_result([])
        return done
    pack = hiredis.pack_command
    assert protocol.transport is not None
    protocol.waiting.append(_Batch(len(commands), done))
    protocol.transport.write(b"".join([pack(tuple(command)) for command in commands]))
    return done


class _Link:
    """The connection to one Redis server, opened on first use and again after a loss."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        path: str | None = None,
        tls: bool,
        setup: Sequence[tuple[Any, ...]],
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        # How many replicas a WAIT asks for here, at most: set by ``RedisWire`` (as many
        # as asked until the server's own count is read).
        self.replicas = 0
        self.listed: int | None = None  # replicas the slot map lists; None: not in the map
        self.online: int | None = None  # replicas INFO lists online; None: not read
        self.counted = False  # counted (or being) since the map last left it out
        self.failed_at = 0.0  # when a connect last failed (monotonic clock); 0: never
        self._failure = ""  # why it failed, while it has
        self._path = path
        self._tls = tls
        self._setup = setup
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Redis node {self._path or f'{self.host}:{self.port}'}>"

    async def connection(self) -> _Protocol:
        """The open connection, opened (with AUTH, SELECT, scripts) if need be."""
        protocol = self._protocol
        if protocol is not None and _usable(protocol):
            return protocol
        async with self._connecting:
            if self._protocol is not None and _usable(self._protocol):
                return self._protocol
            if self._failure and time.monotonic() - self.failed_at < RECONNECT_PAUSE_S:
                raise ReconnectPaused(self._failure)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    if self._path is not None:
                        _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                    else:
                        context = ssl.create_default_context() if self._tls else None
                        _, protocol = await loop.create_connection(
                            _Protocol, self.host, self.port, ssl=context
                        )
            except (OSError, TimeoutError) as exc:
                raise self._connect_failed(f"cannot connect to Redis {self!r}: {exc!r}") from exc
            if self._setup:
                await self._set_up(protocol)
            self._failure, self.failed_at = "", 0.0
            self._protocol = protocol
            return protocol

    async def _set_up(self, protocol: _Protocol) -> None:
        """Send the connection's first commands (AUTH, SELECT, script loads) and check
        their replies; the connection is closed when they fail.

        A server that took the connection but answers nothing (stalled: SIGSTOP, a
        frozen host whose kernel still accepts) fails here, after the connect: that is a
        connection failure of this server like any other, a ``ConnectionError`` (its
        commands answered "unavailable"), never the bare ``TimeoutError`` that failed
        every master's part of a batch with it."""
        assert protocol.transport is not None
        try:
            async with asyncio.timeout(self._timeout):
                replies = await _send(protocol, self._setup)
        except TimeoutError:
            protocol.transport.close()
            failure = (
                f"Redis {self!r} did not answer its connection's setup within {self._timeout} s"
            )
            raise self._connect_failed(failure) from None
        except BaseException:  # cancelled: closed, so that no half set-up connection stays
            protocol.transport.close()
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                protocol.transport.close()
                if isinstance(reply, RedisConnectionError):  # lost during the setup
                    raise self._connect_failed(f"cannot set up Redis {self!r}: {reply}")
                raise reply  # refused (a wrong password, LOADING): the server's answer

    def _connect_failed(self, failure: str) -> RedisConnectionError:
        """Note that connecting failed, or an open connection went unanswered, now (not
        dialled again for ``RECONNECT_PAUSE_S``); the error to raise."""
        self.failed_at = time.monotonic()
        self._failure = failure
        return RedisConnectionError(failure)

    async def run(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Every command's reply or error, in order (a connection lost meanwhile: its
        ``ConnectionError`` in each place); raises ``ConnectionError`` when the server
        cannot be reached or does not answer within the timeout."""
        protocol = self._protocol
        if protocol is None or not _usable(protocol):
            protocol = await self.connection()
        replies = _send(protocol, commands)
        try:
            async with asyncio.timeout(self._timeout):
                return await replies
        except TimeoutError:
            # Closing fails every command in flight on this connection; a batch after
            # the reconnect pause reconnects, so a stalled Redis never holds requests
            # forever, and the batches meanwhile do not dial it again at once (each
            # would wait out its setup's timeout, holding the other masters' replies).
            if protocol.transport is not None:
                protocol.transport.close()
            raise self._connect_failed(
                f"Redis {self!r} did not answer within {self._timeout} s"
            ) from None

    def send_now(self, commands: Sequence[Sequence[Any]]) -> "asyncio.Future[list[Any]] | None":
        """``run`` without a coroutine: the commands written now on the open connection,
        and the future of their replies (``ConnectionError`` in it when the server does
        not answer within the timeout); None when no connection is open (``run`` then
        opens one)."""
        protocol = self._protocol
        if protocol is None or not _usable(protocol):
            return None
        replies = _send(protocol, commands)
        timer = protocol.loop.call_later(self._timeout, self._expire, protocol, replies)
        replies.add_done_callback(lambda _: timer.cancel())
        return replies

    def _expire(self, protocol: _Protocol, replies: "asyncio.Future[list[Any]]") -> None:
        """A batch unanswered within the timeout: as in ``run``, an error for its callers
        and the connection closed (failing every batch in flight on it)."""
        if replies.done():
            return
        replies.set_exception(
            self._connect_failed(f"Redis {self!r} did not answer within {self._timeout} s")
        )
        if protocol.transport is not None:
            protocol.transport.close()

    async def close(self) -> None:
        """Close the connection, if open, and wait until it is closed."""
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await protocol.lost


class RedisWire:
    """Sends batches of commands, each to the master of its key's slot, and returns each
    reply (or the error Redis answered) in the batch's order."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        cluster: bool = False,
        on_connect: Sequence[tuple[Any, ...]] = (),
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        migration_wait: float = MIGRATION_WAIT_S,
    ) -> None:
        self._timeout = timeout
        self._migration_wait = migration_wait
        self._cluster = cluster
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self._tls = parts.scheme == "rediss"
        path = unquote(parts.path) if parts.scheme == "unix" else None
        db_text = query.get("db", [""])[0] or (
            parts.path.strip("/") if parts.scheme != "unix" else ""
        )
        db = int(db_text or 0)
        setup: list[tuple[Any, ...]] = []
        if parts.password is not None:
            username = unquote(parts.username) if parts.username else "default"
            setup.append(("AUTH", username, unquote(parts.password)))
        if db and not cluster:  # a cluster has database 0 only
            setup.append(("SELECT", db))
        setup.extend(on_connect)
        self._setup: tuple[tuple[Any, ...], ...] = tuple(setup)
        self._seed = self._link(parts.hostname or "127.0.0.1", parts.port or 6379, path)
        # Until the server says how many replicas it has live, as many as asked.
        self._seed.replicas = wait_replicas
        self._links: dict[tuple[str, int], _Link] = {(self._seed.host, self._seed.port): self._seed}
        # The master of each slot; None while one server serves them all (standalone).
        self._slots: list[_Link] | None = None
        self._masters: list[_Link] = [self._seed]
        # A cluster's slot map, or a standalone server's live replicas (for WAIT), is to
        # be read before the next batch.
        self._stale = cluster or wait_replicas > 0
        self._refreshed_at = 0.0
        self._refreshing = asyncio.Lock()
        # The probe key found for each master (``write_probe``), kept while it owns its slot.
        self._probe_keys: dict[_Link, str] = {}
        # Masters whose online replicas are to be read (``INFO replication``), and the
        # task reading them: in the background, so that a master slow to answer holds
        # up no batch (the map's count, or as many as asked, stands meanwhile).
        self._to_count: set[_Link] = set()
        self._counting: asyncio.Task[None] | None = None
        self._migrating_logged_at: float | None = None  # monotonic clock; None: never
        # Commands still retried on a migrating slot (``Retrying``): ``close`` lets them end.
        self._retrying: set[asyncio.Task[list[Any]]] = set()

    def _link(self, host: str, port: int, path: str | None = None) -> _Link:
        return _Link(host, port, path=path, tls=self._tls, setup=self._setup, timeout=self._timeout)

    def _link_to(self, host: str, port: int) -> _Link:
        link = self._links.get((host, port))
        if link is None:
            link = self._links[(host, port)] = self._link(host, port)
            # A server first met in a redirection, not yet in the map read: as many
            # replicas as asked until its own count is read, never none (0 acknowledged
            # a scale-out's first writes on a new master without its replica's copy).
            link.replicas = self._wait_replicas
        return link

    @property
    def cluster(self) -> bool:
        """Whether commands are routed by slot over a Redis Cluster's masters."""
        return self._cluster

    def multi_key_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """``keys`` in groups one multi-key command may name together: all of them on a
        standalone server, those of one slot on a cluster."""
        if not self._cluster:
            return [list(keys)] if keys else []
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(key_slot(key), []).append(key)
        return list(groups.values())

    def send_now(self, commands: Sequence[Sequence[Any]]) -> "asyncio.Future[list[Any]] | None":
        """The batch written at once, when one connected server serves it all as it is
        (standalone, no WAIT): the future of its replies, as ``execute_many`` returns
        them. None otherwise: ``execute_many`` then routes, connects and waits."""
        if self._cluster or self._wait_replicas:
            return None
        return self._seed.send_now(commands)

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Replies in order; a command Redis refused has its ``ResponseError`` in its place.

        When the batch could not be sent at all (the only server is unreachable, or
        did not answer in time), raises ``ConnectionError``; a batch that only part
        of a cluster failed to answer has ``ConnectionError`` in those commands' places.
        Commands of a migrating slot are waited for (``execute_answered`` does not).
        """
        if not self._cluster and not self._wait_replicas:
            # One server serves every slot and answers no redirection: the batch goes
            # out whole, as it is (the hot path's common case, kept lean).
            return await self._seed.run(commands)
        replies, retrying = await self.execute_answered(commands)
        if retrying is not None:
            # Awaited directly: a caller that gives up (cancelled) cancels the retries,
            # which nobody else awaits.
            late = await retrying.replies
            for i, reply in zip(retrying.indexes, late, strict=True):
                replies[i] = reply
            failure = batch_failure(replies)
            if failure is not None:
                raise failure
        return replies

    async def execute_answered(
        self, commands: Sequence[Sequence[Any]]
    ) -> tuple[list[Any], Retrying | None]:
        """``execute_many`` without waiting for the commands a slot's migration asked to
        retry (``TRYAGAIN``): their places hold None, and ``Retrying`` (None when there
        are none) answers them when they run, or at the migration deadline.

        A batch is one tick's commands of every caller: one money script on a migrating
        slot held the replies of all the others (other accounts, other masters) until
        it ran or gave up, long after the switches had (decision 0033)."""
        # The batch's migration deadline: a TRYAGAIN is retried no longer than this.
        deadline = time.monotonic() + self._migration_wait
        if self._stale or time.monotonic() - self._refreshed_at > REFRESH_EVERY_S:
            await self._refresh()
        replies = await self._dispatch(commands, range(len(commands)))
        retrying: Retrying | None = None
        if self._cluster:
            retry = [i for i, reply in enumerate(replies) if isinstance(reply, ResponseError)]
            if retry:
                parked: list[int] = []
                await self._follow_redirects(commands, replies, retry, deadline, parked)
                if parked:
                    retrying = self._retry_apart(commands, replies, parked, deadline)
                    for i in parked:
                        replies[i] = None
        if retrying is None:
            failure = batch_failure(replies)
            if failure is not None:
                raise failure
        return replies, retrying

    def _retry_apart(
        self,
        commands: Sequence[Sequence[Any]],
        replies: list[Any],
        indexes: list[int],
        deadline: float,
    ) -> Retrying:
        """Start retrying the commands at ``indexes`` (answered ``TRYAGAIN`` in
        ``replies``) until ``deadline``, by themselves."""
        own = list(replies)  # the caller's list is handed out meanwhile
        task = asyncio.get_running_loop().create_task(
            self._retried(commands, own, indexes, deadline)
        )
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)
        return Retrying(indexes, task)

    async def _retried(
        self,
        commands: Sequence[Sequence[Any]],
        replies: list[Any],
        indexes: list[int],
        deadline: float,
    ) -> list[Any]:
        """The replies of the commands at ``indexes``, retried until they run or
        ``deadline`` passes (``SlotMigrating``)."""
        await self._follow_redirects(commands, replies, list(indexes), deadline)
        return [replies[i] for i in indexes]

    async def _dispatch(
        self,
        commands: Sequence[Sequence[Any]],
        indexes: Sequence[int],
        redirected: dict[int, tuple[_Link, bool]] | None = None,
    ) -> list[Any]:
        """Send the commands at ``indexes``, one write per master (or where ``redirected``
        says: the node, and whether ASKING goes first); their replies (a list as long
        as ``commands``, None where not sent)."""
        slots = self._slots
        if slots is None and redirected is None and len(indexes) == len(commands):
            # One server serves every slot: the batch goes out whole, as it is.
            return await self._run(self._seed, commands, None)
        groups: dict[_Link, list[int]] = {}
        asking = set()
        for i in indexes:
            if redirected is not None and i in redirected:
                link, ask = redirected[i]
                if ask:
                    asking.add(i)
            elif slots is None:
                link = self._seed
            else:
                key = command_key(commands[i])
                link = self._masters[0] if key is None else slots[key_slot(key)]
            groups.setdefault(link, []).append(i)
        parts = await asyncio.gather(
            *(
                self._run(
                    link,
                    [commands[i] for i in members],
                    [i in asking for i in members] if asking else None,
                )
                for link, members in groups.items()
            )
        )
        replies: list[Any] = [None] * len(commands)
        for members, answers in zip(groups.values(), parts, strict=True):
            for i, answer in zip(members, answers, strict=True):
                replies[i] = answer
        return replies

    async def _run(
        self, link: _Link, commands: Sequence[Sequence[Any]], asked: list[bool] | None
    ) -> list[Any]:
        """One master's part of a batch: ASKING before each command ``asked`` marks (sent
        there by ASK), and WAIT after it all when replicas must confirm."""
        batch: list[Sequence[Any]]
        if asked is None:
            batch = list(commands) if self._wait_replicas else cast(list[Any], commands)
        else:
            batch = []
            for command, ask in zip(commands, asked, strict=True):
                if ask:
                    batch.append(("ASKING",))
                batch.append(command)
        wait = min(self._wait_replicas, link.replicas)
        if wait:
            batch.append(("WAIT", wait, self._wait_timeout_ms))
        try:
            answers = await link.run(batch)
        except RedisError as exc:  # unreachable, no answer in time, or LOADING at connect
            answers = [exc] * len(batch)
        if wait:
            confirmed = answers.pop()
            if not isinstance(confirmed, int) or confirmed < wait:
                error = ReplicationUnconfirmed(
                    f"{confirmed} of {wait} replicas of {link!r} confirmed the writes in time"
                )
                answers = [a if isinstance(a, RedisConnectionError) else error for a in answers]
        if asked is not None:
            # Drop the ASKING replies: each sits right before its command's.
            kept = []
            flags = [flag for ask in asked for flag in ((True, False) if ask else (False,))]
            for is_asking, answer in zip(flags, answers, strict=True):
                if not is_asking:
                    kept.append(answer)
            answers = kept
        if any(isinstance(a, RedisConnectionError) for a in answers):
            # A master may have failed over, or lost its replicas: read the map (or the
            # standalone server's replicas) again.
            self._stale = True
        return answers

    async def _follow_redirects(
        self,
        commands: Sequence[Sequence[Any]],
        replies: list[Any],
        retry: list[int],
        deadline: float,
        parked: list[int] | None = None,
    ) -> None:
        """Send again what a cluster redirected (MOVED, ASK) or asked to retry (TRYAGAIN);
        turn CLUSTERDOWN into an outage. Changes ``replies`` in place.

        TRYAGAIN is retried until ``deadline`` (monotonic clock): a slot's migration
        answers it to every script naming a key that does not exist (``topup_done``,
        ``stopped_call``...) from its first step to its last, which takes as long as the
        slot's keys take to move, not a fixed half second. With ``parked``, a command
        answered TRYAGAIN is not retried here but added to it (to be retried apart),
        and no round pauses."""
        moves = 0
        while retry:
            redirected: dict[int, tuple[_Link, bool]] = {}
            again: list[int] = []
            moved = paused = False
            for i in retry:
                reply = replies[i]
                if not isinstance(reply, ResponseError):
                    continue
                text = str(reply)
                word = text.split(" ", 1)[0]
                if word == "MOVED" or word == "ASK":
                    _, slot_text, address = text.split(" ", 2)
                    host, _, port = address.rpartition(":")
                    target = self._redirected_to(host or self._seed.host, int(port))
                    if word == "MOVED":
                        moved = True
                        if self._slots is not None:
                            self._slots[int(slot_text)] = target
                        self._stale = True
                    redirected[i] = (target, word == "ASK")
                    again.append(i)
                elif word == "TRYAGAIN":
                    if parked is not None:
                        parked.append(i)
                        continue
                    paused = True
                    again.append(i)
                elif word in ("CLUSTERDOWN", "MASTERDOWN"):
                    self._stale = True
                    replies[i] = ClusterUnavailable(text)
            if not again:
                return
            if moved:
                moves += 1
            if moves > MAX_REDIRECTS:
                # Moved again and again: the cluster reconfigures faster than it settles.
                for i in again:
                    replies[i] = ClusterUnavailable(f"still redirected: {replies[i]}")
                return
            if paused:
                # Paused whatever else the round holds: a command asked to retry and one
                # sent on by ASK may swap answers each round, and never pause otherwise.
                left = deadline - time.monotonic()
                if left <= 0:
                    self._gave_up_migrating(commands, again)
                    for i in again:
                        replies[i] = SlotMigrating(f"slot still migrating: {replies[i]}")
                    return
                await asyncio.sleep(min(TRYAGAIN_PAUSE_S, left))
            answers = await self._dispatch(commands, again, redirected or None)
            for i in again:
                replies[i] = answers[i]
            retry = [i for i in again if isinstance(replies[i], ResponseError)]

    def _gave_up_migrating(self, commands: Sequence[Sequence[Any]], indexes: list[int]) -> None:
        """Log (at most every ``MIGRATING_LOG_EVERY_S``) that commands of a migrating slot
        are answered "unavailable": no outage is, so this line says why."""
        now = time.monotonic()
        last = self._migrating_logged_at
        if last is not None and now - last < MIGRATING_LOG_EVERY_S:
            return
        self._migrating_logged_at = now
        keys = [command_key(commands[i]) for i in indexes]
        slots = sorted({key_slot(key) for key in keys if key is not None})
        log.warning(
            "a slot still migrating at the batch's deadline: its commands answered unavailable",
            extra={"slots": slots, "deadline_s": self._migration_wait},
        )

    def _redirected_to(self, host: str, port: int) -> _Link:
        """The link to the node a redirection names; one not counted since the map was
        read is counted (its online replicas) in the background."""
        link = self._link_to(host, port)
        if self._wait_replicas and link.listed is None and not link.counted:
            link.counted = True
            self._to_count.add(link)
            self._count_online_soon()
        return link

    async def _refresh(self) -> None:
        """Read the slot map from the first node that answers ``CLUSTER SLOTS``; on a
        standalone server (here only to WAIT), its live replicas."""
        if not self._cluster:
            await self._count_replicas()
            return
        async with self._refreshing:
            now = time.monotonic()
            if not self._stale and now - self._refreshed_at <= REFRESH_EVERY_S:
                return  # another batch refreshed it meanwhile
            if self._slots is not None and now - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
                return  # read moments ago: send on the map there is
            self._refreshed_at = now
            last: Exception | None = None
            candidates = [self._seed, *(m for m in self._masters if m is not self._seed)]
            candidates += [link for link in self._links.values() if link not in candidates]
            # Nodes that answered last time first: a dead one may take a timeout to refuse.
            candidates.sort(key=lambda link: link.failed_at)
            for link in candidates:
                try:
                    (reply,) = await link.run([("CLUSTER", "SLOTS")])
                except RedisError as exc:
                    reply = exc
                if isinstance(reply, Exception):
                    last = reply
                    continue
                self._apply_map(link, reply)
                self._stale = False
                if self._wait_replicas:
                    self._to_count.update(self._masters)
                    self._count_online_soon()
                return
            raise ClusterUnavailable(f"no node of the Redis Cluster answers: {last}")

    async def _count_replicas(self) -> None:
        """Read how many replicas the standalone server has online (``INFO replication``),
        at most as often as a cluster's slot map: WAIT asks for no more than that, as a
        cluster's slot map, which lists live replicas only, bounds it there. Without it,
        a server whose replica is gone had every batch answered "unavailable" though
        every write was applied (decision 0033)."""
        async with self._refreshing:
            now = time.monotonic()
            if not self._stale and now - self._refreshed_at <= REFRESH_EVERY_S:
                return  # another batch read it meanwhile
            if self._refreshed_at and now - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
                return  # read moments ago: send with the count there is
            self._refreshed_at = now
            try:
                (reply,) = await self._seed.run([("INFO", "replication")])
            except RedisError as exc:
                reply = exc
            if isinstance(reply, RedisConnectionError):
                return  # the batch meets the same outage; read again at the next one
            self._stale = False
            if isinstance(reply, Exception):
                # INFO refused (an ACL without it): keep waiting for as many as asked,
                # never acknowledging a write fewer replicas may hold.
                self._seed.replicas = self._wait_replicas
                return
            self._seed.replicas = online_replicas(reply)

    def _apply_map(self, asked: _Link, reply: list[Any]) -> None:
        slots: list[_Link | None] = [None] * SLOTS
        masters: list[_Link] = []
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = _text(master[0]) or asked.host
            link = self._link_to(host, int(master[1]))
            link.listed = len(entry) - 3
            # No more than were online when last counted: Redis 6.2 lists a replica
            # still in its first sync, and a WAIT for it fails every write meanwhile.
            online = link.listed if link.online is None else link.online
            link.replicas = min(link.listed, online)
            if link not in masters:
                masters.append(link)
            for slot in range(start, end + 1):
                slots[slot] = link
        for link in self._links.values():
            if link not in masters:
                # Not a master in this map (a new master owning no slot yet, a former
                # master): as many as asked until a redirection names it and it is
                # counted again.
                link.listed, link.counted = None, False
                link.replicas = self._wait_replicas
        # A slot no master serves (the cluster is down) goes to the node asked: it
        # answers CLUSTERDOWN, an outage, until the map is read again.
        self._slots = [link if link is not None else asked for link in slots]
        self._masters = masters or [asked]

    def _count_online_soon(self) -> None:
        """Start reading the online replicas of the masters in ``_to_count``, unless a
        read is under way (it reads those added meanwhile too)."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.get_running_loop().create_task(self._count_online())

    async def _count_online(self) -> None:
        """Read each master's ``INFO replication``; bound its WAIT by the replicas it lists
        online (and by those the map lists, for a master in the map)."""
        while self._to_count:
            links = list(self._to_count)
            self._to_count.clear()
            counts = await asyncio.gather(
                *(link.run([("INFO", "replication")]) for link in links),
                return_exceptions=True,
            )
            for link, answer in zip(links, counts, strict=True):
                (reply,) = answer if isinstance(answer, list) else [answer]
                link.online = replicas_online_or_none(reply)
                if link.online is None:
                    # Not read (unreachable, or INFO refused): the map's count, or as
                    # many as asked for a master not in it; never fewer than may hold.
                    link.replicas = self._wait_replicas if link.listed is None else link.listed
                elif link.listed is None:
                    link.replicas = min(self._wait_replicas, link.online)
                else:
                    link.replicas = min(link.listed, link.online)

    async def execute_on_every_master(self, commands: Sequence[Sequence[Any]]) -> None:
        """Run ``commands`` on every master (the one server, standalone): script loads."""
        if self._cluster and self._stale:
            await self._refresh()
        for answers in await asyncio.gather(*(m.run(commands) for m in self._masters)):
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer

    async def write_probe(
        self, key: str, ttl_ms: int, wait_s: float
    ) -> dict[str, BaseException | None]:
        """SET a short-lived probe key (kept ``ttl_ms``) on every master: ``key`` on a
        standalone server, on a cluster ``key`` with a hash tag of a slot each master
        holds. Each master's outcome, by its address (``host:port``): None where the
        write was taken, else the error it answered (a refused write: OOM, READONLY...)
        or its outage; a master that does not answer within ``wait_s`` seconds has a
        ``TimeoutError``, so one master mid-failover does not hide the others' answers.
        Raises only when the slot map cannot be read (no master answers)."""
        if self._cluster and (
            self._stale or time.monotonic() - self._refreshed_at > REFRESH_EVERY_S
        ):
            await self._refresh()
        masters = [self._seed] if self._slots is None else list(self._masters)
        probes = [key] if self._slots is None else [self._probe_key(m, key) for m in masters]
        outcomes = await asyncio.gather(
            *(self._probe_one(probe, ttl_ms, wait_s) for probe in probes)
        )
        return {
            master._path or f"{master.host}:{master.port}": outcome
            for master, outcome in zip(masters, outcomes, strict=True)
        }

    async def _probe_one(self, probe: str, ttl_ms: int, wait_s: float) -> BaseException | None:
        """One master's probe write, bounded alone: None when taken, else what failed. A
        batch of its own, so a master that hangs (a host gone without a reset) fails by
        itself, and a redirection is still followed."""
        try:
            async with asyncio.timeout(wait_s):
                (reply,) = await self.execute_many([("SET", probe, "1", "PX", ttl_ms)])
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            return exc
        return reply if isinstance(reply, BaseException) else None

    def _probe_key(self, master: _Link, key: str) -> str:
        """``key`` with a hash tag whose slot ``master`` holds in the map read last."""
        slots = self._slots
        assert slots is not None  # only asked on a cluster whose map is read
        known = self._probe_keys.get(master)
        if known is not None and slots[key_slot(known)] is master:
            return known
        for n in range(_PROBE_TAG_TRIES):
            tag = f"probe:{n}"
            # The slot computed here, not by key_slot: its cache is for the buckets' tags.
            if slots[crc_hqx(tag.encode(), 0) % SLOTS] is master:
                found = self._probe_keys[master] = f"{key}:{{{tag}}}"
                return found
        return key  # not found (cannot happen): the probe reaches another master

    async def close(self) -> None:
        """Close every connection, and wait until each is closed (and the commands still
        retried on a migrating slot are answered: they end by their deadline)."""
        if self._retrying:
            await asyncio.gather(*self._retrying, return_exceptions=True)
        counting = self._counting
        if counting is not None and not counting.done():
            counting.cancel()
            await asyncio.gather(counting, return_exceptions=True)
        links = list(self._links.values())
        await asyncio.gather(*(link.close() for link in links))


def online_replicas(info: bytes | str) -> int:
    """How many replicas ``INFO replication``'s answer lists online (``slave<n>:...,
    state=online,...``): those a WAIT may count on; one still syncing is not."""
    count = 0
    for line in _text(info).splitlines():
        name, _, fields = line.partition(":")
        if name.startswith("slave") and name[5:].isdigit() and "state=online" in fields.split(","):
            count += 1
    return count


def replicas_online_or_none(reply: Any) -> int | None:
    """How many replicas an answer to ``INFO replication`` lists online; None when the
    answer is an error (the server unreachable, or INFO refused by an ACL)."""
    if not isinstance(reply, (bytes, str)):
        return None
    return online_replicas(reply)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
