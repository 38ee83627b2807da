// The microphone side of the phone line, on the audio thread: resample the context rate to
// 8 kHz and encode mu-law, 160 bytes (20 ms) per message, exactly what Twilio streams.
import { FRAME_SAMPLES, LINE_RATE, Resampler, floatToMulaw } from "./dsp.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, LINE_RATE);
    this.frame = new Float32Array(FRAME_SAMPLES);
    this.filled = 0;
    this.sending = false; // frames flow only once the stream has started
    this.muted = false;
    this.alive = true;
    this.startFrame = null;
    this.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "start") this.sending = true;
      else if (msg.type === "mute") this.muted = !!msg.muted;
      else if (msg.type === "stop") this.alive = false;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!this.alive) return false;
    if (!this.sending || !channel) return true;
    if (this.startFrame === null) this.startFrame = currentFrame;
    const line = this.resampler.process(channel);
    for (let i = 0; i < line.length; i++) {
      this.frame[this.filled++] = this.muted ? 0 : line[i];
      if (this.filled === FRAME_SAMPLES) {
        let energy = 0;
        for (let j = 0; j < FRAME_SAMPLES; j++) energy += this.frame[j] * this.frame[j];
        const ulaw = floatToMulaw(this.frame);
        this.port.postMessage(
          { type: "frame", ulaw, energy: energy / FRAME_SAMPLES, startFrame: this.startFrame },
          [ulaw.buffer],
        );
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("softphone-capture", CaptureProcessor);
