"""The console page in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium): it loads with no console errors, shows a stream started after it
loaded within 2 s, and marks the bottleneck stage of that stream's pipeline.

The stream is an export whose client never reads (a socket with a small receive buffer):
its pipeline waits on the client, so the `client` stage is the one the others wait for.
Run by crates/weir/tests/console_page.rs, which starts weir serve and passes WEIR_URL.

With WEIR_ADMIN_KEY set (a server with admin_keys), it checks instead that the page asks
for the key, shows nothing until it is given, and goes live with it. With WEIR_BOTTLENECK
set (a server running a [[pipeline]]), it checks that the pipelines table marks that stage.

Environment: WEIR_URL (http://HOST:PORT), WEIR_EXPORT_PATH, WEIR_TOPIC_PATH,
WEIR_SCREENSHOT (optional: where to save a PNG of the page once it shows all that),
WEIR_ADMIN_KEY, WEIR_BOTTLENECK (optional, see above)."""

import os
import socket
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL = os.environ["WEIR_URL"]
EXPORT = os.environ.get("WEIR_EXPORT_PATH", "")
TOPIC = os.environ.get("WEIR_TOPIC_PATH", "")
BOTTLENECK = os.environ.get("WEIR_BOTTLENECK")
SCREENSHOT = os.environ.get("WEIR_SCREENSHOT")
ADMIN_KEY = os.environ.get("WEIR_ADMIN_KEY")
DEADLINE_S = 30


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def until(what, probe, deadline_s=DEADLINE_S):
    """Polls `probe` until it returns something truthy; fails naming `what` at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    fail(f"{what}: not seen within {deadline_s} s")


def stalled_client(path, accept="*/*"):
    """A GET on a socket with a small receive buffer that is never read."""
    parts = urllib.parse.urlsplit(URL)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: weir\r\naccept: {accept}\r\n\r\n".encode())
    return sock


def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = os.environ.get("WEIR_CHROMIUM_BIN", "/usr/bin/chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("WEIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def with_a_key():
    driver = browser()
    client = stalled_client(EXPORT)
    try:
        driver.get(f"{URL}/_weir/")
        until("the key asked for", lambda: driver.find_element(By.ID, "key").is_displayed())
        if driver.find_element(By.ID, "status").text != "admin key needed":
            fail(f"status: {driver.find_element(By.ID, 'status').text!r}")
        if driver.find_elements(By.CSS_SELECTOR, "#streams tr[data-route]"):
            fail("streams shown without the key")
        driver.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
        driver.find_element(By.CSS_SELECTOR, "#key button").click()
        until("the page live with the key",
              lambda: driver.find_element(By.ID, "status").text == "live")
        until("the export's row",
              lambda: driver.find_elements(By.CSS_SELECTOR, f'#streams tr[data-route="{EXPORT}"]'))
        # The 401 before the key is the browser's own network error line; nothing else.
        found = [e for e in errors(driver) if "401" not in e.get("message", "")]
        if found:
            fail(f"console errors: {found}")
        print("ok: the key asked for, nothing shown without it, live with it")
    finally:
        client.close()
        driver.quit()


def pipeline_bottleneck():
    driver = browser()
    try:
        driver.get(f"{URL}/_weir/")
        until("the page live", lambda: driver.find_element(By.ID, "status").text == "live")
        until(f"{BOTTLENECK} marked in the pipelines table", lambda: driver.find_elements(
            By.CSS_SELECTOR, f'#pipelines tr.stage.bottleneck[data-stage="{BOTTLENECK}"]'))
        stages = driver.find_elements(By.CSS_SELECTOR, "#pipelines tr.stage")
        if len(stages) < 3:
            fail(f"{len(stages)} stage rows in the pipelines table")
        found = errors(driver)
        if found:
            fail(f"console errors: {found}")
        print(f"ok: {BOTTLENECK} marked among {len(stages)} stages, no console errors")
    finally:
        driver.quit()


def main():
    if ADMIN_KEY:
        return with_a_key()
    if BOTTLENECK:
        return pipeline_bottleneck()
    driver = browser()
    clients = []
    try:
        driver.get(f"{URL}/_weir/")
        until("the page live", lambda: driver.find_element(By.ID, "status").text == "live")
        rows = driver.find_elements(By.CSS_SELECTOR, f'#streams tr[data-route="{EXPORT}"]')
        if rows:
            fail("an export row before any export started")

        started = time.monotonic()
        clients.append(stalled_client(EXPORT))
        until("the export's row",
              lambda: driver.find_elements(By.CSS_SELECTOR, f'#streams tr[data-route="{EXPORT}"]'))
        took = time.monotonic() - started
        if took > 2.0:
            fail(f"the stream showed only after {took:.2f} s")
        print(f"the stream showed {took:.2f} s after it started")

        # The first look judges by the whole run so far; the next ones by the last second.
        mark = until("the client stage marked as the bottleneck", lambda: driver.find_elements(
            By.CSS_SELECTOR, '#streams tr.stage.bottleneck[data-stage="client"]'))
        if "bottleneck" not in mark[0].text:
            fail(f"the bottleneck row does not say so: {mark[0].text!r}")
        others = driver.find_elements(By.CSS_SELECTOR, "#streams tr.stage:not(.bottleneck)")
        if not others:
            fail("no other stage rows beside the bottleneck")

        # A topic subscriber that stalls too, and one message to fill its queue, for the picture.
        clients.append(stalled_client(TOPIC, "application/x-ndjson"))
        until("the subscriber's row",
              lambda: driver.find_elements(By.CSS_SELECTOR, f'#streams tr[data-route="{TOPIC}"]'))
        body = ("{\"pad\": \"" + "x" * 200 + "\"}\n") * 400
        urllib.request.urlopen(urllib.request.Request(f"{URL}{TOPIC}", data=body.encode()),
                               timeout=10).read()
        until("the slow mark", lambda: driver.find_elements(By.CSS_SELECTOR, "#streams td.slow"))
        time.sleep(1.2)  # one more snapshot, so that the picture shows rates
        if SCREENSHOT:
            driver.save_screenshot(SCREENSHOT)
            print(f"screenshot: {SCREENSHOT}")

        # Streams by the hundred come and go: the page shows the worst 100 and counts the rest.
        crowd = [stalled_client(TOPIC, "application/x-ndjson") for _ in range(300)]
        until("the rest counted", lambda: driver.find_element(By.ID, "streams-more").text
              .startswith("and "))
        more = driver.find_element(By.ID, "streams-more").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#streams tr[data-route]")
        if len(rows) != 100:
            fail(f"{len(rows)} stream rows with {len(crowd) + 3} streams open, not the worst 100")
        print(f"300 more streams: 100 rows, {more!r}")
        for c in crowd:
            c.close()
        until("the crowd gone", lambda: driver.find_element(By.ID, "streams-more").text == ""
              and len(driver.find_elements(By.CSS_SELECTOR, "#streams tr[data-route]")) <= 4)
        if not driver.find_elements(By.CSS_SELECTOR, f'#streams tr[data-route="{EXPORT}"]'):
            fail("the export's row went with the crowd")

        found = errors(driver)
        if found:
            fail(f"console errors: {found}")
        print("ok: no console errors, the stream shown, the bottleneck marked, the crowd counted")
    finally:
        for c in clients:
            c.close()
        driver.quit()


if __name__ == "__main__":
    main()
