#!/usr/bin/env python3
"""A correct streaming server, for weir check's tests: each request gets an endless body
written with blocking sends, so a slow client holds the writer back and memory stays flat.

With RATE (bytes per second per stream), it writes at that pace into a 4 MiB send buffer
instead: the heap stays flat while the kernel's queue grows for minutes.

Usage: steady_server.py PORT [RATE]   (127.0.0.1 only)
"""
import socket
import sys
import threading
import time

CHUNK = b"data: " + b"x" * 250 + b"\n\n"
MAX_HEAD = 64 * 1024


def serve(client, rate):
    send_buffer = 4 * 1024 * 1024 if rate else 16 * 1024
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
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
            if rate:
                time.sleep(len(CHUNK) / rate)
    except OSError:
        pass
    finally:
        client.close()


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    listener.listen(1024)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, rate), daemon=True).start()


if __name__ == "__main__":
    main()
