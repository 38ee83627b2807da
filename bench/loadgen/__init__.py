"""Load-generator processes for `bench/load.py`: a minimal WebSocket layer over asyncio
protocols (no per-message framework overhead), the fake OpenAI Realtime provider and the
simulated Twilio callers. They run in their own processes, pinned to a core the server
does not use, and talk to the orchestrator as JSON lines on stdin/stdout."""
