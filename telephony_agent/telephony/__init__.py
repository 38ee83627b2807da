"""Telephony transports and the transport-neutral call bridge."""
