#!/usr/bin/env python3
"""What idle keep-alive connections cost: starts `hookbus serve` (stdout bus), opens N
connections that each send one callback and then stay open and idle, and prints the gateway's
resident memory before and with them. The gateway's cap is 20,000 connections, or `CAP`
(with a cap below N, idle connections are closed to make room and memory stays bounded).
`bench/idle.py BINARY 1000 5000 10000`, `CAP=512 bench/idle.py BINARY 1000 5000`"""
import asyncio, os, resource, subprocess, sys, time

BODY = b'{"CallbackCommand":"Live.CallbackAfterMemberStateChanged","RoomId":"room-1"}'


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def hold(port, n, opened):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = BODY.replace(b"room-1", b"room-%d" % n)
    writer.write(b"POST /?SdkAppid=1&CallbackCommand=Live.CallbackAfterMemberStateChanged HTTP/1.1\r\n"
                 b"Host: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    opened.append(writer)


async def measure(binary, counts):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for count in counts:
        gateway = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:18181", "--header-read-timeout", "120s",
             "--max-connections", os.environ.get("CAP", "20000")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        before = rss_kib(gateway.pid)
        opened = []
        for start in range(0, count, 500):
            await asyncio.gather(*(hold(18181, n, opened) for n in range(start, min(start + 500, count))))
        await asyncio.sleep(1)
        idle = rss_kib(gateway.pid)
        print(f"cap {os.environ.get('CAP', '20000'):>5}, {count:>6} idle connections: RSS {before / 1024:.1f} MiB before, {idle / 1024:.1f} MiB with them, "
              f"{(idle - before) * 1024 / count / 1024:.1f} KiB each", flush=True)
        for writer in opened:
            writer.close()
        gateway.terminate()
        gateway.wait()


if __name__ == "__main__":
    asyncio.run(measure(sys.argv[1], [int(n) for n in sys.argv[2:]] or [1000, 5000, 10000]))
