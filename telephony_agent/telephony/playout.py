"""Sans-I/O playout accounting: what to send to the phone leg now, and what the caller has heard.

Outbound audio goes to the leg in chunks of a few frames, each sent with a tag. A confirmation
of a tag means the audio up to and including that chunk has played: Twilio echoes a mark named
by the tag; a leg that confirms nothing gets its confirmations from the pacing clock
(`pacing.py`). After a `clear` the leg may confirm every pending tag at once; those are
remembered as discarded, not played. From the confirmations this class knows, per model output
item, how many milliseconds the caller actually heard, which is what a truncate after barge-in
needs. It keeps at most `lead_ms` of audio outstanding at the leg, so a `clear` never has much
to throw away and barge-in is heard at once.

What the caller heard is counted as a `clear` sent now would leave it. A leg a network away
(a carrier: tens of milliseconds each way) confirms a chunk a round trip after it finished, and
a `clear` stops the audio half a round trip after it is sent: the chunk after a confirmed one
has been playing a whole round trip longer than its confirmation says. The round trip is the
least seen over the call (`leg_rtt_ms`), from chunks sent to a leg that had played everything:
such a chunk's confirmation comes a round trip (and up to a frame) after its audio's length.
Not counting it, a resumed pause repeated about a round trip of audio (100 ms at 40 ms each
way); a round trip too long would skip audio, hence the least seen and the bound.

No clock is read here: every method that needs the time takes `now` (seconds, monotonic).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["MAX_LEG_RTT_S", "Playout", "PlayoutStats", "SendFrames"]

MAX_LEG_RTT_S = 0.3  # a round trip past this is a stalled leg, not the network


@dataclass(slots=True)
class _Chunk:
    """Frames sent as one unit, confirmed by one tag."""

    tag: str
    item_id: str
    ms: int
    sent_at: float
    frames: list[bytes]  # kept until confirmed: a pause sends the unheard part again


@dataclass(slots=True)
class SendFrames:
    """Send these frames to the leg with this tag; they last `ms`."""

    frames: list[bytes]
    tag: str
    item_id: str
    ms: int


@dataclass(slots=True)
class PlayoutStats:
    frames_sent: int = 0
    chunks_sent: int = 0
    chunks_played: int = 0
    confirmations_cleared: int = 0
    unknown_confirmations: int = 0
    clears: int = 0
    frames_dropped: int = 0


@dataclass
class Playout:
    """Outbound queue + confirmation bookkeeping for one call (frames of `frame_ms` each)."""

    lead_ms: int = 200
    frame_ms: int = 20
    chunk_ms: int = 40
    stats: PlayoutStats = field(default_factory=PlayoutStats)

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {self.frame_ms}")
        self.frames_per_chunk = max(1, self.chunk_ms // self.frame_ms)
        self._queue: deque[tuple[str, bytes]] = deque()  # (item_id, frame) not yet sent
        self._outstanding: deque[_Chunk] = deque()  # sent, not yet confirmed
        self._outstanding_ms = 0
        self._cleared: set[str] = set()  # tags whose confirmation means "discarded", not "played"
        self._played_ms: dict[str, int] = {}
        self._last_played_at: float | None = None
        self._seq = 0
        self._rtt: float | None = None  # the leg's round trip, seconds: the least seen (None: not yet)
        self.paused = False  # nothing is sent until `resume()`

    # -- state ------------------------------------------------------------------------------

    @property
    def queued_ms(self) -> int:
        """Audio held locally, not yet sent."""
        return len(self._queue) * self.frame_ms

    @property
    def outstanding_ms(self) -> int:
        """Audio sent to the phone leg and not yet confirmed played."""
        return self._outstanding_ms

    @property
    def idle(self) -> bool:
        """Nothing queued here and nothing left to play at the phone leg."""
        return not self._queue and not self._outstanding

    @property
    def leg_rtt_ms(self) -> float | None:
        """The leg's round trip as its confirmations show it; None until one could."""
        return None if self._rtt is None else self._rtt * 1000

    @property
    def current_item(self) -> str | None:
        """The item whose audio the caller is hearing, or will hear next."""
        if self._outstanding:
            return self._outstanding[0].item_id
        if self._queue:
            return self._queue[0][0]
        return None

    def played_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of `item_id` the caller has heard: confirmed, plus what of the chunks
        still outstanding has played by now (`_heard`)."""
        heard = self._played_ms.get(item_id, 0)
        if self._outstanding:
            for chunk, ms, _ in self._heard(now):
                if chunk.item_id == item_id:
                    heard += round(ms)
        return heard

    def _heard(self, now: float) -> list[tuple[_Chunk, float, bool]]:
        """Each outstanding chunk, the ms of it played by now as a `clear` sent now leaves it,
        and whether its start is counted from its send (the leg then starts it when its next
        frame is due: up to a frame later).

        A chunk sent to a leg that had played everything starts at the send: its way there
        cancels the `clear`'s. The oldest after a confirmed chunk started when that one ended,
        the leg's round trip before the confirmation came; each later one when the one before
        it ended; none before it was sent. Nothing is counted past where the oldest chunk's
        confirmation was due: a late one may be a leg that stopped playing."""
        out: list[tuple[_Chunk, float, bool]] = []
        rtt = self._rtt or 0.0
        last = self._last_played_at
        end = None if last is None else last - rtt
        for index, chunk in enumerate(self._outstanding):
            if end is None or end < chunk.sent_at:
                started, from_send = chunk.sent_at, True
            else:
                started, from_send = end, False
            if index == 0:
                now = min(now, started + chunk.ms / 1000 + rtt)
            out.append((chunk, min(chunk.ms, max(0.0, (now - started) * 1000)), from_send))
            end = started + chunk.ms / 1000
        return out

    def _sent_dry(self, chunk: _Chunk) -> bool:
        """Sent after the leg had played everything before it (no confirmation since): it starts
        when the leg has it, not when the chunk before it ended."""
        last = self._last_played_at
        return last is None or last < chunk.sent_at

    # -- input ------------------------------------------------------------------------------

    def push(self, item_id: str, frames: list[bytes]) -> None:
        queue = self._queue
        for frame in frames:
            queue.append((item_id, frame))

    def poll(self, now: float) -> list[SendFrames]:
        """Frames to send now so that at most `lead_ms` is outstanding at the phone leg."""
        out: list[SendFrames] = []
        if self.paused:
            return out
        queue = self._queue
        budget = (self.lead_ms - self._outstanding_ms) // self.frame_ms
        while queue and budget > 0:
            item_id = queue[0][0]
            limit = min(budget, self.frames_per_chunk)
            frames: list[bytes] = []
            while queue and len(frames) < limit and queue[0][0] == item_id:
                frames.append(queue.popleft()[1])
            budget -= len(frames)
            self._seq += 1
            tag = f"{item_id}:{self._seq}"
            ms = len(frames) * self.frame_ms
            self._outstanding.append(_Chunk(tag, item_id, ms, now, frames))
            self._outstanding_ms += ms
            self.stats.frames_sent += len(frames)
            self.stats.chunks_sent += 1
            out.append(SendFrames(frames, tag, item_id, ms))
        return out

    def on_played(self, tag: str, now: float) -> bool:
        """The leg (or the pacing clock) confirmed `tag` at `now`. Returns True if that confirmed
        audio as played; False for a tag discarded by `clear` or one not outstanding."""
        if tag in self._cleared:
            self._cleared.discard(tag)
            self.stats.confirmations_cleared += 1
            return False
        outstanding = self._outstanding
        if outstanding and outstanding[0].tag == tag:  # the usual case: the oldest chunk
            chunk = outstanding.popleft()
            if self._sent_dry(chunk):  # confirmed a round trip and up to a frame after its audio
                self._learn_rtt(now - chunk.sent_at - (chunk.ms + self.frame_ms) / 1000)
            self._outstanding_ms -= chunk.ms
            self._played_ms[chunk.item_id] = self._played_ms.get(chunk.item_id, 0) + chunk.ms
            self.stats.chunks_played += 1
            self._last_played_at = now
            return True
        # Confirmations come in order; one confirms every chunk up to and including it.
        if not any(c.tag == tag for c in outstanding):
            self.stats.unknown_confirmations += 1
            return False
        while self._outstanding:
            chunk = self._outstanding.popleft()
            self._outstanding_ms -= chunk.ms
            self._played_ms[chunk.item_id] = self._played_ms.get(chunk.item_id, 0) + chunk.ms
            self.stats.chunks_played += 1
            if chunk.tag == tag:
                break
        self._last_played_at = now
        return True

    def _learn_rtt(self, rtt: float) -> None:
        """The least round trip seen: a busy loop or a slow confirmation only lengthens one."""
        rtt = min(MAX_LEG_RTT_S, max(0.0, rtt))
        if self._rtt is None or rtt < self._rtt:
            self._rtt = rtt

    def clear(self) -> int:
        """Barge-in: drop everything not yet played. Returns the ms of audio discarded locally.

        Chunks still outstanding may be confirmed at once by the leg; they are remembered so
        those confirmations are not mistaken for played audio.
        """
        dropped = len(self._queue)
        self.stats.frames_dropped += dropped
        self.stats.clears += 1
        self._queue.clear()
        for chunk in self._outstanding:
            self._cleared.add(chunk.tag)
        self._outstanding.clear()
        self._outstanding_ms = 0
        self._last_played_at = None
        self.paused = False
        return dropped * self.frame_ms

    def pause(self, now: float) -> int:
        """Stop at once, keeping the place (the caller may only have coughed): what the leg
        holds unplayed comes back to the front of the queue, whole frames from the one playing
        now, and nothing is sent until `resume()`. The caller must `clear` the leg. Returns the
        ms taken back."""
        requeue: list[tuple[str, bytes]] = []
        for chunk, heard, from_send in self._heard(now):
            if from_send:
                # The leg starts a chunk when it has it and its next frame is due, up to a frame
                # after we sent it. Counting from the send would skip that frame on resume; a
                # frame repeated is the lesser harm.
                heard -= self.frame_ms
            heard_frames = int(max(0.0, heard)) // self.frame_ms
            if heard_frames:
                self._played_ms[chunk.item_id] = self._played_ms.get(chunk.item_id, 0) + heard_frames * self.frame_ms
            requeue.extend((chunk.item_id, frame) for frame in chunk.frames[heard_frames:])
            self._cleared.add(chunk.tag)
        self._queue.extendleft(reversed(requeue))
        self._outstanding.clear()
        self._outstanding_ms = 0
        self._last_played_at = None
        self.paused = True
        return len(requeue) * self.frame_ms

    def resume(self) -> None:
        """Send again from where `pause` stopped."""
        self.paused = False

    def forget_cleared(self) -> None:
        """The leg will never confirm the cleared tags (it confirms nothing): stop waiting for them."""
        self._cleared.clear()

    def drop_queued(self, item_id: str) -> int:
        """Drop locally queued frames of one item (its output was cancelled)."""
        before = len(self._queue)
        self._queue = deque([entry for entry in self._queue if entry[0] != item_id])
        dropped = before - len(self._queue)
        self.stats.frames_dropped += dropped
        return dropped * self.frame_ms
