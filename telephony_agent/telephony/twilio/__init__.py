"""Twilio transport: webhook signatures, TwiML, Media Streams protocol, REST client.

Protocol modules here are sans-I/O (no sockets, no clock reads); `rest` is the one thin
asyncio module.
"""
