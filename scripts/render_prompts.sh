#!/usr/bin/env bash
# Renders the bridge's fixed prompts to raw mu-law 8 kHz (what the phone leg plays), with
# eSpeak NG and sox. The outputs are committed: the server needs no synthesiser to apologise.
set -euo pipefail
out="$(dirname "$0")/../telephony_agent/telephony/assets"
render() {
  local name=$1 text=$2 effects=${3:-} tmp
  tmp=$(mktemp --suffix=.wav)
  espeak-ng -v en-us -s 165 -w "$tmp" "$text"
  # shellcheck disable=SC2086  # effects are words
  sox -D "$tmp" -r 8000 -c 1 -t ul "$out/$name.ulaw" $effects
  rm -f "$tmp"
}
render apology "I'm sorry, we're having technical difficulties and can't continue this call right now. Please call back later. Goodbye."
render time_limit "We've reached the time limit for this call. Thank you for calling. Goodbye."
render idle "I haven't heard anything for a while, so I'll end the call now. Goodbye."
render shutdown "I'm sorry, this line has to close now. Please call back in a moment. Goodbye."
# the filler plays mid-call: no leading or trailing silence
render filler "One moment, please." "silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0 0.1"
