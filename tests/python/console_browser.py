"""The operator console in a real browser: headless Chromium driven by Selenium (Debian's
`chromium` and `chromium-driver`), with axe-core (npm) checking every page. Run by
cli/tests/console.rs against a broker it started.

Signs in as an admin; registers an application named `<script>alert(1)</script>` (shown as
text); activates its non-production client ID from the keyboard with a reason holding markup
(shown as text); rotates its secret (the old one refused); starts a WebSocket subscriber with
the secret the page showed once and watches it appear in the live view; deactivates the client
ID and sees the subscriber closed with 4003 within 1 s; reads the audit page (each change
names the signed-in actor); checks CSRF, 200% zoom on every page and keyboard use; signs out
and is refused; then a viewer sees no button that changes
anything and its POSTs are refused. No page loads anything from another origin. Screenshots
of each page go to --out.

Prints one line per step; exits 1 with the first failure.
"""

import argparse
import asyncio
import json
import os
import threading
import time

import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from websockets.asyncio.client import connect

XSS = "<script>alert(1)</script>"


def browser():
    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-background-networking",
              "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=opts)


class Console:
    def __init__(self, driver, base, axe, out):
        self.d = driver
        self.base = base
        self.axe = axe
        self.out = out
        self.shots = 0

    def go(self, path):
        self.d.get(self.base + path)

    def shot(self, name):
        self.shots += 1
        self.d.save_screenshot(os.path.join(self.out, f"{self.shots:02d}-{name}.png"))

    def check_page(self, name):
        """axe-core finds no WCAG 2 A/AA violation; nothing came from another origin."""
        self.d.execute_script(self.axe)
        violations = self.d.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
            ".then(function (r) { done(r.violations.map(function (v) {"
            "  return v.id + ': ' + v.help + ' at ' + v.nodes.map(function (n) { return n.target.join(' '); }).join(', ');"
            "})); }, function (e) { done(['axe failed: ' + e]); });"
        )
        assert not violations, f"{name}: accessibility: {violations}"
        urls = self.d.execute_script(
            "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
            ".concat([document.location.href]);"
        )
        foreign = [u for u in urls if not u.startswith(self.base)]
        assert not foreign, f"{name}: loaded from another origin: {foreign}"
        self.shot(name)
        print(f"ok: {name} (axe: no violation, same origin only)", flush=True)

    def wait(self, cond, timeout=10):
        return WebDriverWait(self.d, timeout).until(cond)

    def sign_in(self, token):
        self.go("/console/login")
        self.d.find_element(By.ID, "credential").send_keys(token)
        self.d.find_element(By.CSS_SELECTOR, "form[action='/console/login'] button").click()
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "form.signout")))

    def cookies(self):
        return {c["name"]: c["value"] for c in self.d.get_cookies()}

    def csrf(self):
        return self.d.find_element(By.CSS_SELECTOR, "form.signout input[name=csrf]").get_attribute("value")


class Subscriber:
    """A WebSocket subscriber in a thread: records when and how it was closed."""

    def __init__(self, ws_url, token, pattern):
        self.ws_url, self.token, self.pattern = ws_url, token, pattern
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.close_code = None
        self.closed_at = None
        self.error = None
        threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True).start()

    async def run(self):
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            async with connect(self.ws_url, subprotocols=["scopecast.v1"], additional_headers=headers) as ws:
                welcome = json.loads(await ws.recv())
                assert welcome["type"] == "welcome", welcome
                await ws.send(json.dumps({"type": "subscribe", "id": "s", "topic": self.pattern}))
                ok = json.loads(await ws.recv())
                assert ok["type"] == "subscribed", ok
                self.ready.set()
                try:
                    while True:
                        await ws.recv()
                except Exception:  # noqa: BLE001 - the close is what we wait for
                    self.closed_at = time.monotonic()
                    self.close_code = ws.close_code
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)
        finally:
            self.closed.set()


def form_post(base, path, cookies, data):
    return requests.post(base + path, data=data, cookies=cookies, allow_redirects=False, timeout=10,
                         headers={"Origin": base})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--admin-token", required=True)
    p.add_argument("--viewer-token", required=True)
    p.add_argument("--axe", required=True, help="path of axe.min.js")
    p.add_argument("--out", required=True, help="folder for the screenshots")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base = a.url.rstrip("/")
    with open(a.axe) as f:
        axe = f.read()
    d = browser()
    try:
        c = Console(d, base, axe, a.out)
        # Not signed in: the sign-in page.
        c.go("/console/")
        c.wait(EC.presence_of_element_located((By.ID, "credential")))
        assert d.current_url.endswith("/console/login"), d.current_url
        c.check_page("sign-in")
        # Keyboard: the first Tab reaches the skip link, and it leads to the content.
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        assert d.switch_to.active_element.get_attribute("class") == "skip", "Tab reaches the skip link first"
        # A refused credential says so.
        d.find_element(By.ID, "credential").send_keys("not-a-credential")
        d.find_element(By.ID, "credential").send_keys(Keys.ENTER)
        c.wait(EC.presence_of_element_located((By.ID, "login-error")))

        c.sign_in(a.admin_token)
        assert "/console/overview" in d.current_url, d.current_url
        c.wait(lambda drv: drv.find_element(By.CSS_SELECTOR, "[data-field=connections]").text != "-")
        c.check_page("overview")

        # Register an application whose name is markup: it shows as text.
        c.go("/console/apps")
        c.check_page("applications")
        d.find_element(By.ID, "name").send_keys(XSS)
        d.find_element(By.ID, "vendor").send_keys("Browser Test")
        d.find_element(By.ID, "scope").send_keys("subscribe:fhir.>")
        c.wait(lambda drv: "well formed" in drv.find_element(By.ID, "scope-check").text)
        assert "every topic under fhir." in d.find_element(By.ID, "scope-check").text
        old_h1 = d.find_element(By.TAG_NAME, "h1")
        d.find_element(By.CSS_SELECTOR, "form[action='/console/apps'][method=post] button").click()
        c.wait(EC.staleness_of(old_h1))
        h1 = d.find_element(By.TAG_NAME, "h1")
        errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, "p.notice.error")]
        assert h1.text == "Registered: " + XSS, (h1.text, errors)
        try:
            d.switch_to.alert
            raise AssertionError("a script in the name ran")
        except NoAlertPresentException:
            pass
        rows = d.find_elements(By.CSS_SELECTOR, "table tbody tr")
        creds = {}
        for r in rows:
            cells = r.find_elements(By.TAG_NAME, "td")
            creds[cells[0].text] = (cells[1].text, cells[2].text)
        client_id, secret = creds["non-production"]
        assert secret, "the secret is shown once"
        c.check_page("registered")
        d.find_element(By.LINK_TEXT, "Open the application").click()
        c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f"form[action='/console/clients/{client_id}/activate']")))
        c.check_page("application")

        # Activate the non-production client ID, by keyboard: the reason typed, Enter submits.
        reason = d.find_element(By.ID, f"reason-a-{client_id}")
        reason.send_keys("browser <b>test</b>")
        reason.send_keys(Keys.ENTER)
        c.wait(lambda drv: "Activated" in drv.find_element(By.CSS_SELECTOR, "p.notice").text)
        main_text = d.find_element(By.TAG_NAME, "main").text
        assert "browser <b>test</b>" in main_text, "a reason with markup shows as text"
        assert not d.find_elements(By.CSS_SELECTOR, "main b"), "no element made from a reason"
        c.check_page("activated")

        # Rotate the secret from the console: the new one is shown once; the old one no longer
        # gets a token, the new one does.
        d.find_element(By.CSS_SELECTOR, f"form[action='/console/clients/{client_id}/rotate-secret'] button").click()
        new_secret = c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "code.secret"))).text
        assert new_secret and new_secret != secret
        c.check_page("secret-rotated")
        old = requests.post(base + "/oauth2/token", data={"grant_type": "client_credentials"},
                            auth=(client_id, secret), timeout=10)
        assert old.status_code == 401, old.status_code
        secret = new_secret
        print("ok: secret rotated from the console (old refused)", flush=True)

        # CSRF: the same POST without the session's token is refused, and changes nothing.
        cookies = c.cookies()
        r = form_post(base, f"/console/clients/{client_id}/deactivate", cookies, {"reason": "forged"})
        assert r.status_code == 403, r.status_code
        r = form_post(base, f"/console/clients/{client_id}/deactivate", cookies, {"reason": "forged", "csrf": "wrong"})
        assert r.status_code == 403, r.status_code
        print("ok: CSRF refused without the token", flush=True)

        # A subscriber with the secret the page showed; it appears in the live view.
        tok = requests.post(base + "/oauth2/token", data={"grant_type": "client_credentials"},
                            auth=(client_id, secret), timeout=10)
        assert tok.status_code == 200, tok.text
        ws_url = base.replace("http://", "ws://") + "/v1/stream"
        sub = Subscriber(ws_url, tok.json()["access_token"], "fhir.>")
        assert sub.ready.wait(10), sub.error
        c.go("/console/live")
        c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-client='{client_id}']")))
        row = d.find_element(By.CSS_SELECTOR, f"tr[data-client='{client_id}']")
        assert XSS in row.text, row.text
        c.check_page("live")

        # Deactivate from the console: the page warns first; the subscriber is closed with
        # 4003 within 1 s; the page says so after.
        c.go("/console/apps")
        d.find_element(By.LINK_TEXT, XSS).click()
        warn = c.wait(EC.presence_of_element_located((By.ID, f"warn-{client_id}")))
        assert "1 live session" in warn.text and "4003" in warn.text, warn.text
        clicked = time.monotonic()
        d.find_element(By.CSS_SELECTOR, f"form[action='/console/clients/{client_id}/deactivate'] button").click()
        assert sub.closed.wait(5), "the subscriber was not closed"
        took = sub.closed_at - clicked
        assert sub.close_code == 4003, sub.close_code
        assert took < 1.0, f"closed after {took:.3f} s"
        note = c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "p.notice")))
        assert "Deactivated" in note.text and "4003" in note.text, note.text
        print(f"ok: deactivated from the console, subscriber closed with 4003 after {took * 1000:.0f} ms", flush=True)
        c.check_page("deactivated")

        # The audit: the registry changes by this user, and the subscription's record.
        c.go("/console/audit?client_id=" + client_id)
        c.wait(lambda drv: "closed_by_broker:4003" in drv.find_element(By.TAG_NAME, "main").text, timeout=15)
        assert "client.deactivate" in d.find_element(By.TAG_NAME, "main").text
        # Each change names the signed-in actor (the bootstrap admin credential, "admin").
        changes = {}
        for r in d.find_elements(By.CSS_SELECTOR, "table tbody tr"):
            cells = [td.text for td in r.find_elements(By.TAG_NAME, "td")]
            if len(cells) == 5:
                changes.setdefault(cells[2], cells[1])
        for action in ("client.activate", "client.rotate_secret", "client.deactivate"):
            assert changes.get(action) == "admin", (action, changes)
        c.check_page("audit")
        c.go("/console/catalog")
        c.check_page("catalog")

        # Readable at 200% zoom: half the width, nothing wider than the window.
        d.set_window_size(640, 1000)
        pages = ["/console/overview", "/console/apps", "/console/live", "/console/audit", "/console/catalog"]
        c.go("/console/apps")
        app_page = d.find_element(By.LINK_TEXT, XSS).get_attribute("href").replace(base, "")
        pages.append(app_page)
        for page in pages:
            c.go(page)
            over = d.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            assert over <= 1, f"{page} scrolls sideways at 200% zoom by {over}px"
        c.shot("zoom-200")
        d.set_window_size(1280, 1000)
        print("ok: readable at 200% zoom", flush=True)

        # Sign out: the session is gone server-side; its cookie is refused.
        old = c.cookies()
        d.find_element(By.CSS_SELECTOR, "form.signout button").click()
        c.wait(EC.presence_of_element_located((By.ID, "credential")))
        r = requests.get(base + "/console/overview", cookies=old, allow_redirects=False, timeout=10)
        assert r.status_code in (302, 303, 307) and r.headers["location"].endswith("/console/login"), r.status_code
        r = form_post(base, "/console/apps", old, {"name": "x", "vendor": "y", "scope": "subscribe:a", "csrf": "x"})
        assert r.status_code in (302, 303, 307, 403), r.status_code
        print("ok: signed out and refused after", flush=True)

        # A viewer sees, cannot change: no button, and its POSTs (with its own CSRF token) are
        # refused.
        c.sign_in(a.viewer_token)
        c.go("/console/apps")
        assert not d.find_elements(By.CSS_SELECTOR, "form[action='/console/apps'][method=post]"), "no create form for a viewer"
        d.find_element(By.LINK_TEXT, XSS).click()
        c.wait(EC.presence_of_element_located((By.TAG_NAME, "h1")))
        changing = d.find_elements(By.CSS_SELECTOR, "form[method=post]:not(.signout)")
        assert not changing, [f.get_attribute("action") for f in changing]
        c.check_page("viewer-application")
        token = c.csrf()
        r = form_post(base, f"/console/clients/{client_id}/activate", c.cookies(), {"csrf": token, "reason": "viewer"})
        assert r.status_code == 403, r.status_code
        print("ok: a viewer sees no change button and its POST is refused", flush=True)
    finally:
        d.quit()
    print(f"console: all checks passed, {c.shots} screenshots in {a.out}", flush=True)


if __name__ == "__main__":
    main()
