#!/usr/bin/env python3
"""A correct streaming server whose memory saws, for weir check's tests.

Each request gets an endless body written with blocking sends (a slow client holds its
writer back), as steady_server.py does. Beside them, a replay log keeps the most recent
events for clients that reconnect: it grows by a 1 MiB block every 1/RATE s and, once it
holds MAX blocks, drops its oldest down to MIN at once. Each block is an anonymous
mapping, so a drop returns its pages to the kernel and RSS saws between MIN and MAX MiB,
a band that does not climb: bounded.

Usage: sawing_server.py PORT [MIN MAX RATE]   (127.0.0.1 only; default 8 48 8)
"""
import collections
import mmap
import socket
import sys
import threading
import time

CHUNK = b"data: " + b"x" * 250 + b"\n\n"
MAX_HEAD = 64 * 1024
BLOCK = 1 << 20


def serve(client):
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data or len(head) > MAX_HEAD:
                return
            head += data
        client.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        while True:
            client.sendall(CHUNK)
    except OSError:
        pass
    finally:
        client.close()


def replay_log(low, high, rate):
    log = collections.deque()
    while True:
        block = mmap.mmap(-1, BLOCK)
        block.write(b"e" * BLOCK)  # touch every page: resident
        log.append(block)
        if len(log) >= high:
            while len(log) > low:
                log.popleft().close()
        time.sleep(1.0 / rate)


def main():
    port = int(sys.argv[1])
    low, high, rate = (int(a) for a in sys.argv[2:5]) if len(sys.argv) > 4 else (8, 48, 8)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    threading.Thread(target=replay_log, args=(low, high, rate), daemon=True).start()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
