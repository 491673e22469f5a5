/* Audio of a browser monitor, inside the Web Audio rendering thread.
 *
 * Output: plays the call's audio, which the page posts as Float32Array chunks as they arrive
 * from the server. A short queue absorbs network jitter; when it runs dry the output is silence
 * (and playback starts again once PREFILL samples are queued), when it grows past MAX_QUEUED
 * the oldest audio is dropped, so the supervisor never falls seconds behind the call.
 * Input: the microphone (whisper and barge only), posted back to the page in 20 ms blocks.
 * Every half second the page is told how much was played and dropped.
 */
"use strict";

const BLOCK = 160; // 20 ms at 8 kHz, the rate the console's AudioContext runs at
const PREFILL = 960; // 120 ms
const MAX_QUEUED = 4000; // 500 ms

class IvrMonitor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.queued = 0;
    this.offset = 0; // read position in queue[0]
    this.playing = false;
    this.played = 0;
    this.dropped = 0;
    this.mic = new Float32Array(BLOCK);
    this.micFill = 0;
    this.sinceReport = 0;
    this.port.onmessage = (event) => this.enqueue(event.data);
  }

  enqueue(chunk) {
    this.queue.push(chunk);
    this.queued += chunk.length;
    while (this.queued > MAX_QUEUED && this.queue.length > 1) {
      const old = this.queue.shift();
      this.queued -= old.length - this.offset;
      this.dropped += old.length - this.offset;
      this.offset = 0;
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (out) this.render(out);
    const input = inputs[0] && inputs[0][0];
    if (input) this.capture(input);
    this.sinceReport += out ? out.length : 128;
    if (this.sinceReport >= sampleRate / 2) {
      this.sinceReport = 0;
      this.port.postMessage({ type: "stats", played: this.played, dropped: this.dropped });
    }
    return true;
  }

  render(out) {
    if (!this.playing && this.queued >= PREFILL) this.playing = true;
    let i = 0;
    while (this.playing && i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const n = Math.min(out.length - i, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.queued -= n;
      this.played += n;
      if (this.offset === chunk.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    if (i < out.length) {
      out.fill(0, i);
      this.playing = false; // ran dry: wait for a little audio before playing on
    }
  }

  capture(input) {
    for (let i = 0; i < input.length; i += 1) {
      this.mic[this.micFill] = input[i];
      this.micFill += 1;
      if (this.micFill === BLOCK) {
        this.port.postMessage({ type: "mic", samples: this.mic.slice() });
        this.micFill = 0;
      }
    }
  }
}

registerProcessor("ivr-monitor", IvrMonitor);
