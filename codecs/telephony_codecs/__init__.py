"""Telephony codecs: G.711 and a chunk-exact streaming resampler."""
