// G.711 mu-law and a streaming windowed-sinc resampler: the phone line's codec, in the browser.
// Shared by the capture and playout worklets and by the page (recording, tests). No dependencies.

export const LINE_RATE = 8000;
export const FRAME_SAMPLES = 160; // 20 ms at 8 kHz: one Twilio media frame
export const MULAW_SILENCE = 0xff;

// --- mu-law ------------------------------------------------------------------------------------
// Bit-exact with the server's codec (CPython audioop's lin2ulaw/ulaw2lin: the 14-bit algorithm),
// so the page sends exactly what a phone gateway would.

const SEG_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

function encode14(value) {
  let v = value;
  let mask = 0xff;
  if (v < 0) {
    v = -v;
    mask = 0x7f;
  }
  if (v > 8159) v = 8159;
  v += 0x21;
  let seg = 0;
  while (seg < 8 && v > SEG_END[seg]) seg++;
  if (seg >= 8) return 0x7f ^ mask;
  return ((seg << 4) | ((v >> (seg + 1)) & 0x0f)) ^ mask;
}

// Indexed by the 14-bit sample (int16 >> 2) as an unsigned 14-bit number.
const ENCODE = new Uint8Array(16384);
for (let i = 0; i < 16384; i++) ENCODE[i] = encode14(i >= 8192 ? i - 16384 : i);

export const MULAW_DECODE = new Int16Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  let t = ((u & 0x0f) << 3) + 0x84;
  t <<= (u & 0x70) >> 4;
  MULAW_DECODE[i] = u & 0x80 ? 0x84 - t : t - 0x84;
}

/** One int16 sample to its mu-law byte. */
export function mulawEncode(sample) {
  return ENCODE[(sample >> 2) & 0x3fff];
}

/** Float samples in [-1, 1] to mu-law bytes (clipped); returns `out`. */
export function floatToMulaw(input, out = new Uint8Array(input.length)) {
  for (let i = 0; i < input.length; i++) {
    let s = Math.round(input[i] * 32767);
    if (s > 32767) s = 32767;
    else if (s < -32768) s = -32768;
    out[i] = ENCODE[(s >> 2) & 0x3fff];
  }
  return out;
}

/** mu-law bytes to float samples in [-1, 1). */
export function mulawToFloat(bytes, out = new Float32Array(bytes.length)) {
  for (let i = 0; i < bytes.length; i++) out[i] = MULAW_DECODE[bytes[i]] / 32768;
  return out;
}

// --- resampling ----------------------------------------------------------------------------------

function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 40; k++) {
    term *= (x / (2 * k)) * (x / (2 * k));
    sum += term;
    if (term < 1e-12 * sum) break;
  }
  return sum;
}

/**
 * Streaming band-limited resampler for any pair of rates (44.1/48 kHz <-> 8 kHz here).
 *
 * Each output sample is a Kaiser-windowed sinc low-pass evaluated at its exact fractional input
 * position (the kernel is tabulated and linearly interpolated), so it doubles as the anti-alias
 * filter going down and the anti-image filter going up. Latency: `half` input samples.
 * Feed blocks with `process()` (push), or let `pull()` ask a supplier for input as needed.
 */
export class Resampler {
  constructor(inRate, outRate, { cutoffHz = 3700, zeros = 16, beta = 8 } = {}) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate;
    const nyquist = 0.5 * Math.min(inRate, outRate);
    const fc = Math.min(cutoffHz, 0.95 * nyquist) / inRate; // cycles per input sample
    this.half = zeros / (2 * fc); // kernel half-width, input samples
    this.res = Math.max(32, Math.floor(8192 / this.half)); // table points per input sample
    const n = Math.ceil(this.half * this.res) + 2;
    this.table = new Float32Array(n);
    const i0b = besselI0(beta);
    for (let i = 0; i < n; i++) {
      const tau = i / this.res;
      const r = tau / this.half;
      const win = r >= 1 ? 0 : besselI0(beta * Math.sqrt(1 - r * r)) / i0b;
      const x = 2 * fc * tau;
      this.table[i] = win * 2 * fc * (x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x));
    }
    this.reset();
  }

  /** Forget all history (after a `clear`: nothing of the dropped audio may ring on). */
  reset() {
    const lead = Math.ceil(this.half);
    this.buf = new Float32Array(Math.max(4096, 4 * lead));
    this.len = lead; // zeros before the first sample
    this.pos = lead;
  }

  _append(value) {
    if (this.len === this.buf.length) this._compact(true);
    this.buf[this.len++] = value;
  }

  _compact(grow) {
    const drop = Math.floor(this.pos - this.half) - 1;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
    if (grow && this.len === this.buf.length) {
      const bigger = new Float32Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
  }

  _at(t) {
    const buf = this.buf;
    const table = this.table;
    const res = this.res;
    const half = this.half;
    const k0 = Math.ceil(t - half);
    const k1 = Math.floor(t + half);
    let acc = 0;
    for (let k = k0; k <= k1; k++) {
      const d = Math.abs(t - k) * res;
      const i = d | 0;
      const h = table[i] + (d - i) * (table[i + 1] - table[i]);
      acc += buf[k] * h;
    }
    return acc;
  }

  /** Push a block of input; returns the output it completes (a new Float32Array). */
  process(input) {
    if (this.len + input.length > this.buf.length) this._compact(false);
    while (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(this.buf.length * 2);
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const count = Math.max(0, Math.floor((this.len - this.half - this.pos) / this.step) + 1);
    const out = new Float32Array(count);
    let n = 0;
    while (n < count && this.pos + this.half < this.len) {
      out[n++] = this._at(this.pos);
      this.pos += this.step;
    }
    return n === count ? out : out.subarray(0, n);
  }

  /** Fill `out` (length n), calling `supply()` for each input sample it needs. */
  pull(out, n, supply) {
    for (let j = 0; j < n; j++) {
      while (this.pos + this.half >= this.len) this._append(supply());
      out[j] = this._at(this.pos);
      this.pos += this.step;
    }
    if (this.len > this.buf.length / 2) this._compact(false);
    return out;
  }
}

// --- recording -----------------------------------------------------------------------------------

/** A two-channel 16-bit PCM WAV (caller left, agent right) as a Blob-ready ArrayBuffer. */
export function stereoWav(left, right, rate) {
  const frames = Math.max(left.length, right.length);
  const buffer = new ArrayBuffer(44 + frames * 4);
  const view = new DataView(buffer);
  const text = (offset, s) => {
    for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i));
  };
  text(0, "RIFF");
  view.setUint32(4, 36 + frames * 4, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 2, true);
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 4, true);
  view.setUint16(32, 4, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, frames * 4, true);
  const pcm = new Int16Array(buffer, 44);
  for (let i = 0; i < frames; i++) {
    pcm[2 * i] = i < left.length ? left[i] : 0;
    pcm[2 * i + 1] = i < right.length ? right[i] : 0;
  }
  return buffer;
}
