#!/usr/bin/env python3
"""A deliberately broken streaming proxy, for weir check's tests (never for use).

Each request opens a stream from the upstream and reads it as fast as the upstream sends,
into a list that is never trimmed, whatever pace its client reads at: memory grows at
the upstream's rate, the bug weir check exists to catch. The client socket's send buffer
is small (64 KiB, as weir serve's) so the growth is in the heap, not the kernel.

Usage: buffering_proxy.py PORT UPSTREAM_PORT UPSTREAM_PATH   (127.0.0.1 only)
"""
import socket
import sys
import threading
import time

BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
MAX_HEAD = 64 * 1024


def read_head(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data or len(head) > MAX_HEAD:
            return False
        head += data
    return True


def serve(client, upstream_port, upstream_path):
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    if not read_head(client):
        client.close()
        return
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    upstream.sendall(
        b"POST %s HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % (upstream_path.encode(), len(BODY))
        + BODY
    )
    chunks = []  # the bug: everything the upstream sends, kept
    more = threading.Condition()
    state = {"upstream_done": False, "client_gone": False}

    def pump():
        try:
            while not state["client_gone"]:
                data = upstream.recv(65536)
                if not data:
                    break
                with more:
                    chunks.append(data)
                    more.notify()
                # Batch the upstream's small frames into fewer, larger reads.
                time.sleep(0.05)
        except OSError:
            pass
        with more:
            state["upstream_done"] = True
            more.notify()

    threading.Thread(target=pump, daemon=True).start()
    sent = 0
    try:
        client.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        while True:
            with more:
                while sent >= len(chunks) and not state["upstream_done"]:
                    more.wait()
                if sent >= len(chunks):
                    break
                data = chunks[sent]
            client.sendall(data)
            sent += 1
    except OSError:
        pass
    finally:
        state["client_gone"] = True
        client.close()
        upstream.close()


def main():
    port, upstream_port, upstream_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, upstream_port, upstream_path), daemon=True).start()


if __name__ == "__main__":
    main()
