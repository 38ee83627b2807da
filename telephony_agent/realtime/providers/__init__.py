"""Provider implementations of `RealtimeModel`/`RealtimeSession`."""
