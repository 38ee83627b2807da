"""SIP trunk ingress: an in-house, sans-I/O SIP user agent server with G.711 RTP and RFC 4733 DTMF.

Signalling (`message`, `transaction`, `dialog`, `sdp`, `auth`, `uas`) is plain classes over bytes
with an injected clock; `endpoint` is the asyncio shell that owns the sockets. Media (`rtp`,
`jitter`, `dtmf`, `media`) turns a negotiated RTP stream into a `PhoneLeg` for the call bridge.
"""
