"""Real peers for exercising the agent from outside: a simulated Twilio caller and real speech.

Used by the tests, `telephony-agent call`/`replay` and the benchmarks; nothing here runs in a
serving process.
"""

__all__: list[str] = []
