#!/usr/bin/env python3
"""A burst of blocking callbacks at once: N signed gifts, each on a connection of its own (all
opened first), sent together; prints when each was answered (from its write), and how many
were 200.

    python3 bench/gift_burst.py URL TOKEN APP N

Used by bench/gift_burst.sh against a gateway whose responder answers slower than the decision
timeout: every gift must be answered (by the fallback) within Tencent's 2 s."""

import asyncio
import hashlib
import json
import sys
import time


async def connect(host, port):
    return await asyncio.open_connection(host, port)


async def gift(connection, host, path, n, results):
    reader, writer = connection
    body = json.dumps({"RoomId": f"room-{n}", "GiftId": "rose", "Seq": n}).encode()
    started = time.monotonic()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    await writer.drain()
    status_line = await reader.readline()
    results.append((time.monotonic() - started, int(status_line.split()[1])))
    writer.close()


async def main():
    url, token, app, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    host, port = url.split("//")[1].split("/")[0].split(":")
    now = str(int(time.time()))
    sign = hashlib.sha256((token + now).encode()).hexdigest()
    path = f"/?SdkAppid={app}&CallbackCommand=Live.CallbackBeforeSendGift&Sign={sign}&RequestTime={now}"
    results = []
    # The connections first, as Tencent holds them; then every gift at once, each timed from
    # its write: the client's own pace of connecting is not the gateway's.
    connections = await asyncio.gather(*(connect(host, int(port)) for _ in range(n)))
    await asyncio.gather(*(gift(connection, host, path, i, results) for i, connection in enumerate(connections)))
    took = sorted(t for t, _ in results)
    ok = sum(1 for _, status in results if status == 200)
    print(json.dumps({"gifts": n, "answered_200": ok, "median_s": round(took[len(took) // 2], 3),
                      "p99_s": round(took[int(len(took) * 0.99)], 3), "slowest_s": round(took[-1], 3)}))


asyncio.run(main())
