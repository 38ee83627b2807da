// The speaker side of the phone line, on the audio thread: a jitter buffer of 8 kHz audio,
// resampled up to the context rate, with Twilio's mark semantics. A mark is reported once the
// audio queued before it has been rendered and the output latency (which the page sends: the
// time from here to the speaker) has passed on the audio clock, i.e. once that audio has been
// heard; one with nothing queued before it comes back as soon as the last audio has been heard. `clear` drops the queue and reports every pending mark
// at once. Timing lives here, not in main-thread timers, which a browser may throttle.
import { LINE_RATE, MULAW_DECODE, Resampler } from "./dsp.js";

const WAITING = 0; // nothing to play, or filling the jitter buffer
const PLAYING = 1;
const STATUS_EVERY = 0.1; // seconds of audio time between status reports
const REC_CHUNK = 4000; // recorded 8 kHz samples per message (0.5 s)

class PlayoutProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    const prebufferMs = opts.prebufferMs ?? 60;
    this.prebuffer = Math.round((prebufferMs * LINE_RATE) / 1000);
    this.maxWait = prebufferMs / 1000; // a segment shorter than the prebuffer starts anyway
    this.maxQueue = LINE_RATE * (opts.maxQueueSeconds ?? 30);
    this.resampler = new Resampler(LINE_RATE, sampleRate);
    this.state = WAITING;
    this.chunks = [];
    this.head = 0;
    this.queued = 0; // samples waiting to play
    this.enqueued = 0; // audio samples ever queued (marks are positions in this count)
    this.consumed = 0; // audio samples ever played
    this.marks = []; // {name, at}: waiting for the audio before them
    this.played = []; // {name, due}: rendered, waiting out the output latency (in ticks)
    this.ticks = 0; // 8 kHz samples rendered, silence included: the player's clock
    this.latency = 0; // output latency in ticks
    this.lastAudioTick = -Infinity; // when the last real sample was rendered
    this.firstArrival = null;
    this.overflow = 0;
    this.lastStatus = 0;
    this.recording = false;
    this.startFrame = null;
    this.rec = new Int16Array(REC_CHUNK);
    this.recN = 0;
    this.alive = true;
    this.supply = () => this.next();
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === "media") this.enqueue(msg.ulaw);
    else if (msg.type === "mark") this.marks.push({ name: msg.name, at: this.enqueued });
    else if (msg.type === "clear") this.clear();
    else if (msg.type === "latency") this.latency = Math.max(0, Math.round(msg.seconds * LINE_RATE));
    else if (msg.type === "start") this.recording = true;
    else if (msg.type === "stop") {
      this.flushRecording();
      this.alive = false;
    }
  }

  enqueue(ulaw) {
    if (this.queued + ulaw.length > this.maxQueue) {
      this.overflow += ulaw.length; // a peer ignoring pacing: drop rather than grow without bound
      return;
    }
    const samples = new Float32Array(ulaw.length);
    for (let i = 0; i < ulaw.length; i++) samples[i] = MULAW_DECODE[ulaw[i]] / 32768;
    this.chunks.push(samples);
    this.queued += samples.length;
    this.enqueued += samples.length;
    if (this.state === WAITING && this.firstArrival === null) this.firstArrival = currentTime;
  }

  clear() {
    const dropped = this.queued;
    this.chunks = [];
    this.head = 0;
    this.queued = 0;
    this.enqueued = this.consumed;
    this.resampler.reset(); // no ringing tail of the dropped audio
    const names = [...this.played.map((m) => m.name), ...this.marks.map((m) => m.name)];
    this.marks = [];
    this.played = [];
    const wasPlaying = this.state === PLAYING;
    this.state = WAITING;
    this.firstArrival = null;
    this.port.postMessage({ type: "cleared", names, droppedMs: dropped / 8, wasPlaying, time: currentTime, tick: this.ticks });
  }

  next() {
    this.ticks++;
    let value = 0;
    if (this.state === PLAYING && this.queued > 0) {
      const chunk = this.chunks[0];
      value = chunk[this.head++];
      this.queued--;
      this.consumed++;
      this.lastAudioTick = this.ticks;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    if (this.recording) {
      let s = Math.round(value * 32768);
      if (s > 32767) s = 32767;
      else if (s < -32768) s = -32768;
      this.rec[this.recN++] = s;
      if (this.recN === REC_CHUNK) this.flushRecording();
    }
    return value;
  }

  /** Marks whose audio has been rendered start waiting out the output latency. */
  takeMarks() {
    while (this.marks.length && this.marks[0].at <= this.consumed) {
      // Due when the last audio before it has left the speaker: now, if that was long ago.
      const due = Math.max(this.ticks, this.lastAudioTick + this.latency);
      this.played.push({ name: this.marks.shift().name, due });
    }
  }

  flushRecording() {
    if (this.recN === 0) return;
    const samples = this.rec.slice(0, this.recN);
    this.port.postMessage({ type: "rec", samples, startFrame: this.startFrame }, [samples.buffer]);
    this.recN = 0;
  }

  process(inputs, outputs) {
    if (!this.alive) return false;
    const out = outputs[0][0];
    if (this.recording && this.startFrame === null) this.startFrame = currentFrame;
    if (this.state === WAITING && this.queued > 0) {
      if (this.queued >= this.prebuffer || currentTime - this.firstArrival >= this.maxWait) {
        this.state = PLAYING;
        this.port.postMessage({ type: "playing", time: currentTime, tick: this.ticks, queuedMs: this.queued / 8 });
      }
    }
    this.takeMarks(); // before rendering: marks whose audio had all played, or had none
    this.resampler.pull(out, out.length, this.supply);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (this.state === PLAYING && this.queued === 0) {
      this.state = WAITING;
      this.firstArrival = null;
      this.port.postMessage({ type: "drained", time: currentTime });
    }
    this.takeMarks();
    if (this.played.length && this.played[0].due <= this.ticks) {
      const names = [];
      while (this.played.length && this.played[0].due <= this.ticks) names.push(this.played.shift().name);
      this.port.postMessage({ type: "played", names, time: currentTime, tick: this.ticks });
    }
    if (currentTime - this.lastStatus >= STATUS_EVERY) {
      this.lastStatus = currentTime;
      this.port.postMessage({
        type: "status",
        queuedMs: this.queued / 8,
        playedMs: this.consumed / 8,
        overflowMs: this.overflow / 8,
        time: currentTime,
      });
    }
    return true;
  }
}

registerProcessor("softphone-playout", PlayoutProcessor);
