"""Sans-I/O playout accounting: what to send to the phone leg now, and what the caller has heard.

The phone leg (Twilio) buffers outbound audio and echoes a mark once the audio before it has
played; after a `clear` it echoes every pending mark at once. From those echoes this class knows,
per model output item, how many milliseconds the caller actually heard, which is what a
truncate after barge-in needs. It keeps at most `lead_ms` of audio outstanding at the phone leg,
so a `clear` never has much to throw away and barge-in is heard at once.

No clock is read here: every method that needs the time takes `now` (seconds, monotonic).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FRAME_MS = 20
FRAME_BYTES = 160  # mu-law 8 kHz, 20 ms


@dataclass(slots=True)
class _Chunk:
    """Frames sent as one unit, followed by one mark."""

    mark: str
    item_id: str
    ms: int
    sent_at: float


@dataclass(slots=True)
class SendFrames:
    """Send these 20 ms frames, then a mark with this name."""

    frames: list[bytes]
    mark: str
    item_id: str


@dataclass(slots=True)
class PlayoutStats:
    frames_sent: int = 0
    marks_sent: int = 0
    marks_played: int = 0
    marks_cleared: int = 0
    unknown_marks: int = 0
    clears: int = 0
    frames_dropped: int = 0
    watchdog_fired: int = 0


@dataclass
class Playout:
    """Outbound queue + mark bookkeeping for one call."""

    lead_ms: int = 200
    frames_per_mark: int = 2
    watchdog_s: float = 1.0
    stats: PlayoutStats = field(default_factory=PlayoutStats)

    def __post_init__(self) -> None:
        self._queue: deque[tuple[str, bytes]] = deque()  # (item_id, frame) not yet sent
        self._outstanding: deque[_Chunk] = deque()  # sent, mark not yet echoed
        self._cleared: set[str] = set()  # marks whose echo means "discarded", not "played"
        self._played_ms: dict[str, int] = {}
        self._last_echo_at: float | None = None
        self._seq = 0

    # -- state ------------------------------------------------------------------------------

    @property
    def queued_ms(self) -> int:
        """Audio held locally, not yet sent."""
        return len(self._queue) * FRAME_MS

    @property
    def outstanding_ms(self) -> int:
        """Audio sent to the phone leg and not yet confirmed played."""
        return sum(c.ms for c in self._outstanding)

    @property
    def idle(self) -> bool:
        """Nothing queued here and nothing left to play at the phone leg."""
        return not self._queue and not self._outstanding

    @property
    def current_item(self) -> str | None:
        """The item whose audio the caller is hearing, or will hear next."""
        if self._outstanding:
            return self._outstanding[0].item_id
        if self._queue:
            return self._queue[0][0]
        return None

    def played_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of `item_id` the caller has heard: confirmed by marks, plus the part of
        the chunk now playing (it started when the previous mark echoed or when it was sent)."""
        heard = self._played_ms.get(item_id, 0)
        if self._outstanding and self._outstanding[0].item_id == item_id:
            head = self._outstanding[0]
            started = head.sent_at if self._last_echo_at is None else max(self._last_echo_at, head.sent_at)
            heard += int(min(head.ms, max(0.0, (now - started) * 1000)))
        return heard

    # -- input ------------------------------------------------------------------------------

    def push(self, item_id: str, frames: list[bytes]) -> None:
        for frame in frames:
            self._queue.append((item_id, frame))

    def poll(self, now: float) -> list[SendFrames]:
        """Frames to send now so that at most `lead_ms` is outstanding at the phone leg."""
        out: list[SendFrames] = []
        budget = (self.lead_ms - self.outstanding_ms) // FRAME_MS
        while self._queue and budget > 0:
            item_id = self._queue[0][0]
            frames: list[bytes] = []
            while self._queue and len(frames) < min(budget, self.frames_per_mark) and self._queue[0][0] == item_id:
                frames.append(self._queue.popleft()[1])
            budget -= len(frames)
            self._seq += 1
            mark = f"{item_id}:{self._seq}"
            self._outstanding.append(_Chunk(mark, item_id, len(frames) * FRAME_MS, now))
            self.stats.frames_sent += len(frames)
            self.stats.marks_sent += 1
            out.append(SendFrames(frames, mark, item_id))
        return out

    def on_mark(self, name: str, now: float) -> bool:
        """A mark echo arrived. Returns True if it confirmed played audio."""
        if name in self._cleared:
            self._cleared.discard(name)
            self.stats.marks_cleared += 1
            return False
        # Marks echo in order; an echo confirms every chunk up to and including it.
        if not any(c.mark == name for c in self._outstanding):
            self.stats.unknown_marks += 1
            return False
        while self._outstanding:
            chunk = self._outstanding.popleft()
            self._played_ms[chunk.item_id] = self._played_ms.get(chunk.item_id, 0) + chunk.ms
            self.stats.marks_played += 1
            if chunk.mark == name:
                break
        self._last_echo_at = now
        return True

    def clear(self) -> int:
        """Barge-in: drop everything not yet played. Returns the ms of audio discarded locally.

        Marks still outstanding will be echoed at once by the phone leg; they are remembered so
        their echoes are not mistaken for played audio.
        """
        dropped = len(self._queue)
        self.stats.frames_dropped += dropped
        self.stats.clears += 1
        self._queue.clear()
        for chunk in self._outstanding:
            self._cleared.add(chunk.mark)
        self._outstanding.clear()
        self._last_echo_at = None
        return dropped * FRAME_MS

    def drop_queued(self, item_id: str) -> int:
        """Drop locally queued frames of one item (its output was cancelled)."""
        before = len(self._queue)
        self._queue = deque(entry for entry in self._queue if entry[0] != item_id)
        dropped = before - len(self._queue)
        self.stats.frames_dropped += dropped
        return dropped * FRAME_MS

    def watchdog(self, now: float) -> bool:
        """If the phone leg stopped echoing marks, assume the oldest chunk played so playout
        can't stall forever. Returns True when it had to."""
        if not self._outstanding:
            return False
        head = self._outstanding[0]
        started = head.sent_at if self._last_echo_at is None else max(self._last_echo_at, head.sent_at)
        if now - started < head.ms / 1000 + self.watchdog_s:
            return False
        self.stats.watchdog_fired += 1
        self.on_mark(head.mark, now)
        return True
