"""Loopback test peers that speak the real wire protocols (fake Twilio, fake providers)."""
