// The softphone page: a phone leg in the browser that speaks the Twilio Media Streams protocol.
//
// Call: microphone and audio graph first (a refused microphone must not take a call slot), then
// POST softphone/call (the page's voice webhook: admission, call SID, stream token), then the
// media socket: `connected`, `start` with the token in customParameters, 20 ms mu-law `media`
// frames from the capture worklet. The agent's `media` goes to the playout worklet (jitter
// buffer); its `mark`s are echoed once the audio before them has played out (rendered, plus the
// context's output latency); `clear` drops the queue and every pending mark is echoed at once.
import { LINE_RATE, MULAW_DECODE, stereoWav } from "./dsp.js";

const CALL_URL = "softphone/call";
const PREBUFFER_MS = 60; // jitter buffer filled before a talk spurt starts playing
const TURN_GAP_MS = 400; // agent silence that ends its turn (shorter gaps are underruns)
const VAD_ON_DB = -42; // caller speech: frames louder than this ...
const VAD_ON_FRAMES = 2; // ... this many in a row
const VAD_OFF_FRAMES = 25; // 500 ms quieter ends the utterance
const AUDIBLE_DB = -50; // agent output level counted as heard
const METER_MS = 50;
const CONNECT_TIMEOUT_MS = 10000;
const MAX_RECORD_SAMPLES = LINE_RATE * 1800; // keep at most 30 minutes per channel in memory

const State = Object.freeze({
  IDLE: "idle",
  PLACING: "placing",
  CONNECTING: "connecting",
  IN_CALL: "in_call",
  ENDING: "ending",
  ENDED: "ended",
  REFUSED: "refused",
  FAILED: "failed",
});

const REFUSALS = {
  token_required: "This server needs an access token to place calls.",
  bad_token: "The access token was refused.",
  cross_origin: "Calls can only be placed from the softphone page itself.",
  no_twilio_auth_token: "The server has no TWILIO_AUTH_TOKEN, so its media socket accepts no stream tokens.",
  draining: "The server is shutting down and takes no new calls.",
  at_capacity: "The server is at its call limit. Try again shortly.",
  overloaded: "The server is overloaded. Try again shortly.",
};

const $ = (id) => document.getElementById(id);

function randomSid(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function db(meanSquare) {
  return 10 * Math.log10(meanSquare + 1e-12);
}

class Softphone {
  constructor() {
    this.access = document.body.dataset.access || "local";
    this.state = State.IDLE;
    this.reset();
    this.bindUi();
    this.setState(State.IDLE, this.access === "token" ? "Ready: enter the access token, then Call" : "Ready");
  }

  reset() {
    this.ws = null;
    this.ctx = null;
    this.media = null;
    this.capture = null;
    this.playout = null;
    this.callSid = null;
    this.streamSid = null;
    this.seq = 0;
    this.chunk = 0;
    this.t0 = null; // audio-clock time the stream started
    this.hangingUp = false;
    this.error = null;
    this.callerRec = [];
    this.callerSamples = 0;
    this.agentRec = [];
    this.agentSamples = 0;
    this.captureStart = null;
    this.playoutStart = null;
    this.recordingCapped = false;
    this.agentTalking = false;
    this.turnStart = null;
    this.turnMarks = 0;
    this.turnTimer = null;
    this.callerLoud = 0;
    this.callerQuiet = 0;
    this.callerSpeaking = false;
    this.callerStart = null;
    this.callerEnd = null;
    this.timeline = [];
    this.stats = {
      framesSent: 0,
      mediaReceived: 0,
      agentBytes: 0,
      marksReceived: 0,
      marksEchoed: 0,
      marksEchoedOnClear: 0,
      maxMarksPending: 0, // marks waiting for their audio to play out, at most
      clears: 0,
      clearedMs: 0,
      underruns: 0,
      dtmfSent: [],
      firstAudioMs: null,
      answerLatencyMs: [],
      playedMs: 0,
      queuedMs: 0,
      outputAudibleMs: 0,
      outputPeakDb: -120,
      micAudibleMs: 0,
      micPeakDb: -120,
      callerUtterances: 0,
      agentTurns: 0,
      closeCode: null,
      closedByServer: false,
      wavBytes: 0,
    };
  }

  // --- UI ----------------------------------------------------------------------------------------

  bindUi() {
    $("token-row").hidden = this.access !== "token";
    $("call").addEventListener("click", () => this.call());
    $("hangup").addEventListener("click", () => this.hangup());
    $("mute").addEventListener("click", () => this.toggleMute());
    for (const key of document.querySelectorAll("#keypad button")) {
      key.addEventListener("click", () => this.dtmf(key.dataset.digit));
    }
    // Closing or leaving the page hangs up properly (`stop`), as a caller's phone would.
    window.addEventListener("pagehide", () => this.hangup());
    document.addEventListener("keydown", (event) => {
      if (this.state === State.IN_CALL && /^[0-9*#]$/.test(event.key) && event.target.tagName !== "INPUT") {
        this.dtmf(event.key);
      }
    });
    this.updateButtons();
  }

  setState(state, text) {
    this.state = state;
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text || state.replace("_", " ");
    this.updateButtons();
  }

  updateButtons() {
    const inCall = this.state === State.IN_CALL;
    const idle = [State.IDLE, State.ENDED, State.REFUSED, State.FAILED].includes(this.state);
    $("call").disabled = !idle;
    $("hangup").disabled = !(inCall || this.state === State.CONNECTING || this.state === State.PLACING);
    $("mute").disabled = !inCall;
    for (const key of document.querySelectorAll("#keypad button")) key.disabled = !inCall;
  }

  now() {
    return this.ctx && this.t0 !== null ? this.ctx.currentTime - this.t0 : 0;
  }

  note(kind, text, at = this.now()) {
    const entry = { t: Math.round(at * 1000) / 1000, kind, text };
    this.timeline.push(entry);
    const li = document.createElement("li");
    li.dataset.kind = kind;
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = `${entry.t.toFixed(2)} s`;
    const k = document.createElement("span");
    k.className = "kind";
    k.textContent = kind;
    const x = document.createElement("span");
    x.textContent = text;
    li.append(t, k, x);
    const list = $("timeline");
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  showStats() {
    const s = this.stats;
    const last = s.answerLatencyMs[s.answerLatencyMs.length - 1];
    const show = (id, text) => {
      const el = $(id);
      if (el.textContent !== text) el.textContent = text; // same text: no layout
    };
    show("stat-first-audio", s.firstAudioMs === null ? "–" : `${s.firstAudioMs} ms`);
    show("stat-answer", last === undefined ? "–" : `${last} ms`);
    show("stat-marks", `${s.marksEchoed} of ${s.marksReceived}`);
    show("stat-clears", `${s.clears}`);
    show("stat-buffer", `${Math.round(s.queuedMs / 20) * 20} ms queued, ${(s.playedMs / 1000).toFixed(1)} s played`);
    show("stat-underruns", `${s.underruns}`);
  }

  /** Everything a test or a curious developer may want, as plain JSON. */
  snapshot() {
    return {
      state: this.state,
      status: $("status").textContent,
      access: this.access,
      callSid: this.callSid,
      error: this.error,
      sampleRate: this.ctx ? this.ctx.sampleRate : null,
      stats: { ...this.stats, dtmfSent: [...this.stats.dtmfSent], answerLatencyMs: [...this.stats.answerLatencyMs] },
      timeline: this.timeline.map((e) => ({ ...e })),
      wavUrl: $("download").hidden ? null : $("wav").href,
    };
  }

  // --- placing and ending the call ------------------------------------------------------------

  async call() {
    if (![State.IDLE, State.ENDED, State.REFUSED, State.FAILED].includes(this.state)) return;
    const token = $("token").value.trim();
    if (this.access === "token" && !token) {
      this.refuse("token_required");
      return;
    }
    this.reset();
    $("timeline").replaceChildren();
    $("download").hidden = true;
    this.setState(State.PLACING, "Starting the microphone…");
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      this.fail("This browser gives pages the microphone only over https:// or on localhost / 127.0.0.1.");
      return;
    }
    try {
      await this.startAudio();
    } catch (err) {
      this.fail(`Microphone or audio unavailable: ${err.message || err}`);
      return;
    }
    this.setState(State.PLACING, "Placing the call…");
    let body = {};
    let resp;
    try {
      const headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = `Bearer ${token}`;
      resp = await fetch(CALL_URL, { method: "POST", headers, body: "{}", cache: "no-store" });
      body = await resp.json().catch(() => ({}));
    } catch (err) {
      this.fail(`Could not reach the server: ${err.message || err}`);
      return;
    }
    if (this.state !== State.PLACING) return; // hung up meanwhile
    if (!resp.ok) {
      this.refuse(body.reason || body.error || `http_${resp.status}`);
      return;
    }
    this.callSid = body.callSid;
    this.accountSid = body.accountSid;
    this.customParameters = body.customParameters || {};
    this.openStream(body.streamPath);
  }

  async startAudio() {
    // The context first, while the click still counts as a user gesture (autoplay policy).
    const ctx = new AudioContext({ latencyHint: "interactive" });
    this.ctx = ctx;
    this.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await ctx.audioWorklet.addModule("softphone/static/capture-worklet.js");
    await ctx.audioWorklet.addModule("softphone/static/playout-worklet.js");
    if (ctx.state !== "running") await ctx.resume();
    const source = ctx.createMediaStreamSource(this.media);
    this.micAnalyser = ctx.createAnalyser();
    this.micAnalyser.fftSize = 1024;
    this.capture = new AudioWorkletNode(ctx, "softphone-capture", { numberOfOutputs: 1, outputChannelCount: [1] });
    source.connect(this.micAnalyser);
    source.connect(this.capture);
    this.capture.connect(ctx.destination); // silent: keeps the node pulled by the graph
    this.playout = new AudioWorkletNode(ctx, "softphone-playout", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { prebufferMs: PREBUFFER_MS },
    });
    this.agentAnalyser = ctx.createAnalyser();
    this.agentAnalyser.fftSize = 1024;
    this.playout.connect(this.agentAnalyser);
    this.agentAnalyser.connect(ctx.destination);
    this.capture.port.onmessage = (event) => this.onCapture(event.data);
    this.playout.port.onmessage = (event) => this.onPlayout(event.data);
    this.meterTimer = setInterval(() => this.meter(), METER_MS);
  }

  openStream(streamPath) {
    this.setState(State.CONNECTING, "Connecting…");
    const url = new URL(streamPath, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    const timer = setTimeout(() => {
      if (this.state === State.CONNECTING) {
        this.fail("The media socket did not open in time.");
        ws.close();
      }
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(timer);
      if (this.state !== State.CONNECTING) return;
      this.streamSid = randomSid("MZ");
      this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
      this.send({
        event: "start",
        sequenceNumber: this.nextSeq(),
        start: {
          accountSid: this.accountSid,
          streamSid: this.streamSid,
          callSid: this.callSid,
          tracks: ["inbound"],
          customParameters: this.customParameters,
          mediaFormat: { encoding: "audio/x-mulaw", sampleRate: LINE_RATE, channels: 1 },
        },
        streamSid: this.streamSid,
      });
      this.t0 = this.ctx.currentTime;
      // Known once the context runs: the player holds marks back by it.
      this.playout.port.postMessage({ type: "latency", seconds: this.outputLatency() });
      this.capture.port.postMessage({ type: "start" });
      this.playout.port.postMessage({ type: "start" });
      this.setState(State.IN_CALL, "In call");
      this.note("call", `connected: call ${this.callSid}`);
    };
    ws.onmessage = (event) => this.onServer(event.data);
    ws.onclose = (event) => {
      clearTimeout(timer);
      this.onClosed(event.code, event.reason);
    };
    ws.onerror = () => {}; // onclose follows with the code
  }

  hangup() {
    if (this.state === State.PLACING || this.state === State.CONNECTING) {
      this.hangingUp = true;
      if (this.ws) this.ws.close(1000, "hangup");
      this.finish(State.ENDED, "Call cancelled");
      return;
    }
    if (this.state !== State.IN_CALL) return;
    this.hangingUp = true;
    this.setState(State.ENDING, "Hanging up…");
    this.send({
      event: "stop",
      sequenceNumber: this.nextSeq(),
      streamSid: this.streamSid,
      stop: { accountSid: this.accountSid, callSid: this.callSid },
    });
    this.note("call", "you hung up");
    this.ws.close(1000, "hangup");
  }

  onClosed(code, reason) {
    this.stats.closeCode = code;
    if (this.state === State.CONNECTING) {
      this.refuse("stream_refused", `The media stream was refused (${code}${reason ? ` ${reason}` : ""}).`);
      return;
    }
    if (this.state !== State.IN_CALL && this.state !== State.ENDING) return;
    if (!this.hangingUp) {
      this.stats.closedByServer = true;
      this.note("call", `the agent ended the call (${code})`);
    }
    this.finish(State.ENDED, "Call ended");
  }

  refuse(reason, text) {
    this.error = reason;
    this.teardownAudio();
    this.setState(State.REFUSED, text || REFUSALS[reason] || `Call refused: ${reason}`);
  }

  fail(text) {
    this.error = text;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    this.teardownAudio();
    this.setState(State.FAILED, text);
  }

  async finish(state, text) {
    this.setState(state, text);
    if (this.playout) this.playout.port.postMessage({ type: "stop" }); // flushes its last recording
    if (this.capture) this.capture.port.postMessage({ type: "stop" });
    await new Promise((resolve) => setTimeout(resolve, 150)); // the last recording message arrives
    this.teardownAudio();
    this.offerRecording();
    this.showStats();
  }

  teardownAudio() {
    clearInterval(this.meterTimer);
    if (this.media) for (const track of this.media.getTracks()) track.stop();
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    this.setLevel("mic-level", -120);
    this.setLevel("agent-level", -120);
  }

  // --- the media socket ----------------------------------------------------------------------------

  nextSeq() {
    this.seq += 1;
    return String(this.seq);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  onServer(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    if (msg.event === "media" && msg.media && typeof msg.media.payload === "string") {
      const ulaw = fromBase64(msg.media.payload);
      this.stats.mediaReceived += 1;
      this.stats.agentBytes += ulaw.length;
      this.playout.port.postMessage({ type: "media", ulaw }, [ulaw.buffer]);
    } else if (msg.event === "mark" && msg.mark && typeof msg.mark.name === "string") {
      this.stats.marksReceived += 1;
      const pending = this.stats.marksReceived - this.stats.marksEchoed;
      this.stats.maxMarksPending = Math.max(this.stats.maxMarksPending, pending);
      this.playout.port.postMessage({ type: "mark", name: msg.mark.name });
    } else if (msg.event === "clear") {
      this.stats.clears += 1;
      this.playout.port.postMessage({ type: "clear" });
    }
  }

  echo(name) {
    this.stats.marksEchoed += 1;
    this.turnMarks += 1;
    this.send({ event: "mark", sequenceNumber: this.nextSeq(), streamSid: this.streamSid, mark: { name } });
  }

  outputLatency() {
    const ctx = this.ctx;
    return ctx ? (ctx.baseLatency || 0) + (ctx.outputLatency || 0) : 0;
  }

  // --- the worklets --------------------------------------------------------------------------------

  onCapture(msg) {
    if (msg.type !== "frame" || this.state !== State.IN_CALL) return;
    if (this.captureStart === null) this.captureStart = msg.startFrame;
    this.chunk += 1;
    this.send({
      event: "media",
      sequenceNumber: this.nextSeq(),
      streamSid: this.streamSid,
      media: {
        track: "inbound",
        chunk: String(this.chunk),
        timestamp: String((this.chunk - 1) * 20),
        payload: toBase64(msg.ulaw),
      },
    });
    this.stats.framesSent += 1;
    this.record("caller", msg.ulaw);
    this.vad(db(msg.energy));
  }

  vad(level) {
    if (level > VAD_ON_DB) {
      this.callerLoud += 1;
      this.callerQuiet = 0;
    } else {
      this.callerQuiet += 1;
      this.callerLoud = 0;
    }
    if (!this.callerSpeaking && this.callerLoud >= VAD_ON_FRAMES) {
      this.callerSpeaking = true;
      this.callerStart = this.now() - (VAD_ON_FRAMES * 20) / 1000;
      this.stats.callerUtterances += 1;
      this.note("caller", this.agentTalking ? "speaking over the agent" : "speaking", this.callerStart);
    } else if (this.callerSpeaking && this.callerQuiet >= VAD_OFF_FRAMES) {
      this.callerSpeaking = false;
      this.callerEnd = this.now() - (VAD_OFF_FRAMES * 20) / 1000;
      this.note("caller", `stopped (${(this.callerEnd - this.callerStart).toFixed(1)} s)`, this.callerEnd);
    }
  }

  onPlayout(msg) {
    if (msg.type === "rec") {
      if (this.playoutStart === null) this.playoutStart = msg.startFrame;
      this.record("agent", msg.samples);
      return;
    }
    if (this.t0 === null) return;
    const at = msg.time - this.t0;
    if (msg.type === "played") {
      for (const name of msg.names) this.echo(name);
    } else if (msg.type === "cleared") {
      for (const name of msg.names) this.echo(name);
      this.stats.marksEchoedOnClear += msg.names.length;
      this.stats.clearedMs += msg.droppedMs;
      const dropped = Math.round(msg.droppedMs);
      const pending = `${msg.names.length} pending mark${msg.names.length === 1 ? "" : "s"} acknowledged at once`;
      this.note("barge-in", `playback cleared: ${dropped} ms dropped, ${pending}`, at);
      if (this.agentTalking) this.endTurn(at, "cut off");
    } else if (msg.type === "playing") {
      this.onPlaying(at);
    } else if (msg.type === "drained") {
      clearTimeout(this.turnTimer);
      this.turnTimer = setTimeout(() => this.endTurn(at, "finished"), TURN_GAP_MS);
    } else if (msg.type === "status") {
      this.stats.playedMs = msg.playedMs;
      this.stats.queuedMs = msg.queuedMs;
      this.showStats();
    }
  }

  onPlaying(at) {
    if (this.agentTalking) {
      if (this.turnTimer !== null) {
        clearTimeout(this.turnTimer);
        this.turnTimer = null;
        this.stats.underruns += 1; // the buffer ran dry inside a turn
      }
      return;
    }
    this.agentTalking = true;
    this.turnStart = at;
    this.turnMarks = 0;
    this.stats.agentTurns += 1;
    const heardAt = at + this.outputLatency();
    let text = "speaking";
    if (this.stats.firstAudioMs === null) {
      this.stats.firstAudioMs = Math.round(heardAt * 1000);
      text += `: first audio ${this.stats.firstAudioMs} ms after the stream started`;
    } else if (this.callerEnd !== null && !this.callerSpeaking && this.callerEnd > (this.lastTurnEnd ?? -1)) {
      const latency = Math.round((heardAt - this.callerEnd) * 1000);
      this.stats.answerLatencyMs.push(latency);
      text += `: answered ${latency} ms after you stopped`;
    }
    this.note("agent", text, at);
  }

  endTurn(at, how) {
    clearTimeout(this.turnTimer);
    this.turnTimer = null;
    if (!this.agentTalking) return;
    this.agentTalking = false;
    this.lastTurnEnd = at;
    const length = (at - this.turnStart).toFixed(1);
    this.note("agent", `${how} after ${length} s, ${this.turnMarks} marks acknowledged`, at);
  }

  // --- meters and recording ------------------------------------------------------------------------

  meter() {
    const level = (analyser) => {
      const data = new Float32Array(analyser.fftSize);
      analyser.getFloatTimeDomainData(data);
      let sum = 0;
      for (let i = 0; i < data.length; i++) sum += data[i] * data[i];
      return db(sum / data.length);
    };
    if (!this.micAnalyser || !this.agentAnalyser) return;
    const mic = level(this.micAnalyser);
    const agent = level(this.agentAnalyser);
    this.setLevel("mic-level", mic);
    this.setLevel("agent-level", agent);
    if (this.state !== State.IN_CALL) return;
    const s = this.stats;
    s.micPeakDb = Math.max(s.micPeakDb, Math.round(mic));
    s.outputPeakDb = Math.max(s.outputPeakDb, Math.round(agent));
    if (mic > AUDIBLE_DB) s.micAudibleMs += METER_MS;
    if (agent > AUDIBLE_DB) s.outputAudibleMs += METER_MS;
  }

  /** A meter shows -60..0 dBFS, in 2 % steps: unchanged steps cost no style work at all. */
  setLevel(id, level) {
    const step = Math.round(Math.max(0, Math.min(1, (level + 60) / 60)) * 50) / 50;
    const el = $(id);
    if (el.dataset.step === String(step)) return;
    el.dataset.step = String(step);
    el.style.transform = `scaleX(${step})`;
  }

  record(channel, data) {
    const samples = data instanceof Int16Array ? data : Int16Array.from(data, (b) => MULAW_DECODE[b]);
    if (channel === "caller") {
      if (this.callerSamples >= MAX_RECORD_SAMPLES) return this.capRecording();
      this.callerRec.push(samples);
      this.callerSamples += samples.length;
    } else {
      if (this.agentSamples >= MAX_RECORD_SAMPLES) return this.capRecording();
      this.agentRec.push(samples);
      this.agentSamples += samples.length;
    }
  }

  capRecording() {
    if (this.recordingCapped) return;
    this.recordingCapped = true;
    this.note("call", "recording stopped: 30 minutes kept");
  }

  offerRecording() {
    if (!this.callerSamples && !this.agentSamples) return;
    // Both channels run on the audio clock: pad the one that started later.
    const rate = this.ctx ? this.ctx.sampleRate : 48000;
    const lag = Math.round((((this.captureStart ?? 0) - (this.playoutStart ?? 0)) * LINE_RATE) / rate);
    const join = (chunks, total, pad) => {
      const out = new Int16Array(total + pad);
      let offset = pad;
      for (const c of chunks) {
        out.set(c, offset);
        offset += c.length;
      }
      return out;
    };
    const caller = join(this.callerRec, this.callerSamples, Math.max(0, lag));
    const agent = join(this.agentRec, this.agentSamples, Math.max(0, -lag));
    const wav = stereoWav(caller, agent, LINE_RATE);
    this.stats.wavBytes = wav.byteLength;
    const link = $("wav");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
    link.download = `softphone-${this.callSid || "call"}.wav`;
    $("download").hidden = false;
  }

  // --- caller actions ----------------------------------------------------------------------------

  dtmf(digit) {
    if (this.state !== State.IN_CALL) return;
    this.send({
      event: "dtmf",
      streamSid: this.streamSid,
      sequenceNumber: this.nextSeq(),
      dtmf: { track: "inbound_track", digit },
    });
    this.stats.dtmfSent.push(digit);
    this.note("dtmf", `keypad ${digit}`);
    this.tone(digit);
  }

  /** The key's two tones, locally (the agent gets the digit as a `dtmf` event, as from Twilio). */
  tone(digit) {
    const rows = { 1: 697, 2: 697, 3: 697, 4: 770, 5: 770, 6: 770, 7: 852, 8: 852, 9: 852, "*": 941, 0: 941, "#": 941 };
    const cols = { 1: 1209, 4: 1209, 7: 1209, "*": 1209, 2: 1336, 5: 1336, 8: 1336, 0: 1336, 3: 1477, 6: 1477, 9: 1477, "#": 1477 };
    const ctx = this.ctx;
    const gain = ctx.createGain();
    gain.gain.value = 0.08;
    gain.connect(ctx.destination);
    for (const freq of [rows[digit], cols[digit]]) {
      const osc = ctx.createOscillator();
      osc.frequency.value = freq;
      osc.connect(gain);
      osc.start();
      osc.stop(ctx.currentTime + 0.12);
    }
  }

  toggleMute() {
    if (this.state !== State.IN_CALL) return;
    const muted = $("mute").getAttribute("aria-pressed") !== "true";
    $("mute").setAttribute("aria-pressed", String(muted));
    this.capture.port.postMessage({ type: "mute", muted });
    this.note("call", muted ? "microphone muted" : "microphone on");
  }
}

window.softphone = new Softphone();
