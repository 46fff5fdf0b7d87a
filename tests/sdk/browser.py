"""A browser reading weir's streams: headless Chromium loads browser/stream.html from a
loopback http.server; the page fetch()es weir's paced OpenAI and Anthropic routes (/slow:
keep-alive comments, then tokens at a set rate), reads each body with a ReadableStream
reader, appends the text to the page, and POSTs what the page shows back to the server.
The text must equal what the mock sends for the same knobs, and must have arrived in
many reads.

Why not `--dump-dom --virtual-time-budget`: virtual time does not wait for a response
body still streaming, so Chromium dumped the page before the first token (seen here).

The page's origin (http.server on WEIR_PAGE_PORT) is not weir's: Chromium enforces CORS
as for any web page (no --disable-web-security), so each fetch() is preceded by a
preflight (a JSON POST with an API key header) and its response must carry the page's
origin. The Rust test chooses the port and lists http://127.0.0.1:PORT in the routes'
cors_origins. Run by crates/weir/tests/proxy_sdk.rs."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

from weirenv import KNOBS, MOCK_URL, TIMEOUT, WEIR_KEY, WEIR_URL, check

CHROMIUM = os.environ.get("WEIR_CHROMIUM", "chromium")
PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser")
PAGE_PORT = int(os.environ["WEIR_PAGE_PORT"])
DEADLINE_S = 60


def expected(path, body):
    """The mock's non-streaming answer for the knobs weir's routes carry."""
    request = urllib.request.Request(f"{MOCK_URL}{path}?{urlencode(KNOBS)}",
                                     data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.load(response)


class PageServer(ThreadingHTTPServer):
    """Serves the page, and takes the one report the page POSTs to /result."""

    def __init__(self):
        super().__init__(("127.0.0.1", PAGE_PORT), PageHandler)
        self.result = None
        self.reported = threading.Event()


class PageHandler(SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=PAGE_DIR, **kwargs)

    def do_POST(self):
        if self.path != "/result":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers["content-length"]))
        self.send_response(204)
        self.end_headers()
        self.server.result = json.loads(body)
        self.server.reported.set()

    def log_message(self, *args):
        pass


def run_page(url, server):
    """Runs Chromium on `url` until the page reports or the deadline; returns its stderr."""
    profile = tempfile.mkdtemp(prefix="weir-chromium-")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", url]
    # Its own process group, so that the browser's helper processes are stopped with it.
    with tempfile.TemporaryFile() as log:
        chromium = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not server.reported.wait(0.1):
                if chromium.poll() is not None or time.monotonic() > deadline:
                    break
        finally:
            try:
                os.killpg(chromium.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            chromium.wait()
            shutil.rmtree(profile, ignore_errors=True)
        log.seek(0)
        return log.read().decode(errors="replace")


def main():
    messages = [{"role": "user", "content": "Say something deterministic."}]
    want_openai = expected("/v1/chat/completions", {"model": "mock", "messages": messages})
    want_openai = want_openai["choices"][0]["message"]["content"]
    want_anthropic = expected("/v1/messages", {"model": "mock", "max_tokens": 4096, "messages": messages})
    want_anthropic = want_anthropic["content"][0]["text"]

    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    print(version.stdout.strip())
    server = PageServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = f"http://127.0.0.1:{server.server_port}/stream.html?" + urlencode(
            {"weir": WEIR_URL, "key": WEIR_KEY, "prefix": "/slow"})
        started = time.monotonic()
        err = run_page(page, server)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()

    result = server.result
    check(result is not None, f"the page reported within {DEADLINE_S} s ({elapsed:.1f} s)",
          f"chromium's stderr:\n{err[-3000:]}")
    check(result["status"] == "done", "the page read both streams to their end", repr(result))
    reads = [int(n) for n in result["reads"].split()]
    # The /slow route paces the tokens: the text must arrive in pieces, not all at the end.
    check(min(reads) >= 10, f"the bodies arrived as they were produced: {reads} reads")
    got = result["openai"]
    check(got == want_openai, f"OpenAI stream read by fetch() equals the mock's text ({len(got)} chars)",
          f"page: {got!r}\nmock: {want_openai!r}")
    got = result["anthropic"]
    check(got == want_anthropic, f"Anthropic stream read by fetch() equals the mock's text ({len(got)} chars)",
          f"page: {got!r}\nmock: {want_anthropic!r}")


if __name__ == "__main__":
    main()
