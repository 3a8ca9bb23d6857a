"""A chat bot in the seed's JSON protocol: it greets the room and answers "!time".

    python examples/bot.py ws://127.0.0.1:8000/chat/lobby/

Needs the `websockets` package (pip install websockets).
"""

import json
import sys
from datetime import datetime, timezone

from websockets.sync.client import connect

url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/chat/lobby/"
with connect(url) as ws:
    ws.send(json.dumps({"handle": "clockbot", "message": "hello! say !time"}))
    for frame in ws:
        event = json.loads(frame)
        if event.get("message", "").strip() == "!time" and event.get("handle") != "clockbot":
            now = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
            ws.send(json.dumps({"handle": "clockbot", "message": f"{event['handle']}: it is {now}"}))
