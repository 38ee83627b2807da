"""A pjsua2 (PJSIP) caller for the SIP tests, run as its own process: a real, widely used SIP and
media stack (telephone-event PT 120). Null sound device; a WAV is the microphone; what the caller
hears is recorded to a WAV; RFC 4733 digits; BYE at the end (unless the agent hangs up first).

Prints one JSON line at exit: {"media": bool, "state": ..., "code": ..., "remote_bye": bool}.
Loopback only; every port comes from the command line (tests run in parallel).
"""

import argparse
import json
import sys
import time

import pjsua2 as pj


class Call(pj.Call):
    def __init__(self, acc, player, recorder):
        super().__init__(acc)
        self.player = player
        self.recorder = recorder
        self.media_ready = False
        self.disconnected = False
        self.code = 0

    def onCallState(self, prm):
        ci = self.getInfo()
        print(f"{time.time():.2f} call state: {ci.stateText} ({ci.lastStatusCode} {ci.lastReason})",
              file=sys.stderr, flush=True)
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
            self.code = ci.lastStatusCode

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and not self.media_ready:
                am = self.getAudioMedia(i)
                self.player.startTransmit(am)
                am.startTransmit(self.recorder)
                self.media_ready = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--wav", required=True)
    ap.add_argument("--rec", required=True)
    ap.add_argument("--sip-port", type=int, required=True)
    ap.add_argument("--rtp-port", type=int, required=True)
    ap.add_argument("--codec", default="PCMU", choices=["PCMU", "PCMA"])
    ap.add_argument("--talk", type=float, default=7.0, help="seconds of call before the digits")
    ap.add_argument("--digits", default="")
    ap.add_argument("--max-seconds", type=float, default=40)
    ap.add_argument("--answer-timeout", type=float, default=20, help="seconds to wait for the answer")
    ap.add_argument("--linger", type=float, default=0.5, help="seconds to stay after the digits (the agent may hang up)")
    a = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = 2
    cfg.logConfig.consoleLevel = 2
    cfg.uaConfig.maxCalls = 1
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = a.sip_port
    tcfg.boundAddress = "127.0.0.1"
    tcfg.publicAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for c in ep.codecEnum2():  # one G.711 law only, like a trunk
        ep.codecSetPriority(c.codecId, 255 if c.codecId.startswith(a.codec + "/") else 0)
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:pjsua2@127.0.0.1:{a.sip_port}"
    acfg.mediaConfig.transportConfig.port = a.rtp_port
    acfg.mediaConfig.transportConfig.portRange = 1
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acc = pj.Account()
    acc.create(acfg)
    player = pj.AudioMediaPlayer()
    player.createPlayer(a.wav, pj.PJMEDIA_FILE_NO_LOOP)
    recorder = pj.AudioMediaRecorder()
    recorder.createRecorder(a.rec)
    call = Call(acc, player, recorder)
    result = converse(ep, call, a)
    del call, recorder, player  # drop SWIG objects before the library goes, else abort() at exit
    acc.shutdown()
    del acc
    ep.libDestroy()
    del ep
    print(json.dumps(result), flush=True)
    return 0 if result["media"] else 1


def converse(ep, call, a) -> dict:
    call.makeCall(a.to, pj.CallOpParam(True))
    t0 = time.monotonic()

    def pump(until, stop=lambda: False):
        while time.monotonic() < min(until, t0 + a.max_seconds) and not call.disconnected and not stop():
            ep.libHandleEvents(20)

    pump(t0 + a.answer_timeout, lambda: call.media_ready)
    if call.media_ready:
        pump(time.monotonic() + a.talk)
        for d in a.digits:
            if call.disconnected:
                break
            call.dialDtmf(d)  # RFC 4733
            print(f"{time.time():.2f} sent DTMF {d}", file=sys.stderr, flush=True)
            pump(time.monotonic() + 0.4)
        pump(time.monotonic() + a.linger)
    remote_bye = call.disconnected
    print(f"{time.time():.2f} done talking (remote BYE: {remote_bye})", file=sys.stderr, flush=True)
    if not call.disconnected:
        call.hangup(pj.CallOpParam(True))
        pump(time.monotonic() + 2)
    result = {"media": call.media_ready, "code": call.code, "remote_bye": remote_bye, "disconnected": call.disconnected}
    ep.hangupAllCalls()
    for _ in range(15):
        ep.libHandleEvents(20)
    return result


if __name__ == "__main__":
    sys.exit(main())
