"""The browser softphone: a web page that is a real phone leg on the Twilio Media Streams protocol.

`routes.install(app)` serves `GET /softphone` (one static page and its scripts, shipped in the
package) and `POST /softphone/call`, the page's equivalent of Twilio's voice webhook. The page
then opens `/twilio/media` exactly as Twilio does, so what a developer hears in the browser is
what a caller hears on the phone.
"""

from telephony_agent.telephony.browser.routes import (
    CALL_PATH,
    PAGE_PATH,
    Access,
    access_mode,
    install,
)

__all__ = ["CALL_PATH", "PAGE_PATH", "Access", "access_mode", "install"]
