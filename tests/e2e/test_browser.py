"""End to end in headless Chromium (Debian's chromium + chromium-driver via Selenium).

The real app runs as a server process (`sanic app:create_app --factory`, like production)
on real PostgreSQL and Redis; Google is oidc-provider-mock, OpenAI is the in-repo fake
(tests/fakes/openai_server.py). The browser signs in through the provider's consent form,
sends a message, watches the reply stream in, reloads and finds the conversation again,
and signs out. The browser can reach loopback only (host resolver rules), so the mock's
CDN stylesheet is never fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from oidc_provider_mock import run_server_in_thread

from tests.conftest import VALID_ENV
from tests.fakes.gmail_api import GMAIL_SCOPES, FakeGmail
from tests.fakes.openai_server import DEFAULT_API_KEY, FakeOpenAI, Reply, ToolCall
from tests.servers import RedisServer, free_port, stop_process_group, wait_for_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SANIC = str(Path(sys.executable).with_name("sanic"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = ROOT / ".tmp" / "artifacts"
REPLY = "Hello Eve! Your inbox has three unread messages about the quarterly report."


class AppProcess:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANTAPP_")}
        self.env = {**base, **VALID_ENV, **env}
        self.log = Path(tempfile.mkstemp(prefix="aa-e2e-app-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.provider_url = ""

    def start(self) -> AppProcess:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [SANIC, "app:create_app", "--factory", "--single-process",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_for_port(self.port, timeout=120)  # 2 shared cores: imports alone can take 40 s
            deadline = time.monotonic() + 30
            while httpx.get(self.base_url + "/health/live", timeout=5).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError
                time.sleep(0.2)
        except Exception:
            self.stop()
            raise AssertionError(f"app did not start:\n{self.output()[-3000:]}") from None
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_gmail() -> Iterator[FakeGmail]:
    fake = FakeGmail(client_id=VALID_ENV["GOOGLE_CLIENT_ID"],
                     client_secret=VALID_ENV["GOOGLE_CLIENT_SECRET"]).start()
    yield fake
    fake.stop()


@pytest.fixture
def app_process(migrated_database_url: str, redis_server: RedisServer,
                fake_openai: FakeOpenAI, fake_gmail: FakeGmail) -> Iterator[AppProcess]:
    port = free_port()
    with run_server_in_thread() as provider:
        app = AppProcess({
            "DATABASE_URL": migrated_database_url,
            "REDIS_URL": redis_server.url(),
            "GOOGLE_DISCOVERY_URL":
                f"http://localhost:{provider.server_port}/.well-known/openid-configuration",
            "GOOGLE_REDIRECT_URI": f"http://127.0.0.1:{port}/auth/google/callback",
            "OPENAI_BASE_URL": f"{fake_openai.url}/v1",
            "OPENAI_API_KEY": DEFAULT_API_KEY,
            "GMAIL_API_BASE_URL": fake_gmail.url,
            "RATE_LIMIT_MAX_REQUESTS": "100000",
            "LOG_LEVEL": "warning",
        }, port)
        app.provider_url = f"http://localhost:{provider.server_port}"
        app.start()
        try:
            yield app
        finally:
            app.stop()
            app.log.unlink(missing_ok=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise AssertionError("chromium and chromium-driver are required (make setup)")
    profile = tempfile.mkdtemp(prefix="aa-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps",
                 "--disable-extensions", "--window-size=1200,800",
                 f"--user-data-dir={profile}",
                 # Loopback only: nothing this browser does may leave the machine.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, "
                 "EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which downloads drivers) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_sign_in_chat_stream_reload_and_sign_out(app_process: AppProcess,
                                                 fake_openai: FakeOpenAI,
                                                 fake_gmail: FakeGmail,
                                                 browser: Any) -> None:
    try:
        run_browser_journey(app_process, fake_openai, fake_gmail, browser)
    except Exception:
        # What the browser showed and said, and what the server logged: enough to debug.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "e2e-failure.png"))
        print("URL:", browser.current_url)
        shown = browser.execute_script(
            "return document.querySelector('main:not([hidden])').outerHTML")
        print("PAGE:", shown[-3000:].replace("\n", " "))
        print("BROWSER LOG:", browser.get_log("browser"))
        print("APP LOG:", app_process.output()[-5000:])
        raise


def test_a_server_without_keys_says_what_is_off_and_what_turns_it_on(
        migrated_database_url: str, redis_server: RedisServer, browser: Any) -> None:
    """A local deploy without Google and OpenAI credentials: the page explains instead of
    offering a sign-in that can only fail; /auth/google and /health say the same."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    app = AppProcess({"DATABASE_URL": migrated_database_url, "REDIS_URL": redis_server.url(),
                      "GOOGLE_CLIENT_ID": "", "GOOGLE_CLIENT_SECRET": "",
                      "OPENAI_API_KEY": "", "LOG_LEVEL": "warning"}, free_port()).start()
    try:
        browser.get(app.base_url + "/")
        notice = WebDriverWait(browser, 40).until(
            ec.visibility_of_element_located((By.ID, "features-off")))
        lines = [p.text for p in notice.find_elements(By.TAG_NAME, "p")]
        assert lines == [
            "Google sign-in is off on this server. Its operator turns it on by setting "
            "GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET.",
            "The assistant is off on this server. Its operator turns it on by setting "
            "OPENAI_API_KEY.",
        ]
        assert not browser.find_element(By.ID, "sign-in").is_displayed()

        page = httpx.get(app.base_url + "/auth/google", headers={"Accept": "text/html"},
                         timeout=10)
        assert page.status_code == 503
        assert "GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET" in page.text
        api = httpx.get(app.base_url + "/auth/google", headers={"Accept": "application/json"},
                        timeout=10)
        assert api.json()["code"] == "google_not_configured"
        # Ready (nothing is broken, two features are off), and /health says which.
        ready = httpx.get(app.base_url + "/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["auth"] == "disabled"
        health = httpx.get(app.base_url + "/health", timeout=10).json()
        assert health["features"]["signIn"] == {
            "enabled": False, "enableWith": ["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET"]}
        assert health["features"]["assistant"]["enabled"] is False
    finally:
        app.stop()
        app.log.unlink(missing_ok=True)


def connect_fake_gmail(app_process: AppProcess, fake_gmail: FakeGmail, email: str) -> None:
    """Give the signed-in user Google tokens the fake Gmail accepts (the OIDC mock's own
    tokens mean nothing to it), encrypted as the app would store them."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    import asyncpg

    from app.auth.google_tokens import encrypt_token
    from app.config import load_settings

    settings = load_settings({k: v for k, v in app_process.env.items()
                              if k.isupper()}, env_file=None)
    access = encrypt_token(settings, fake_gmail.issue_token(GMAIL_SCOPES))
    refresh = encrypt_token(settings, fake_gmail.issue_refresh_token(GMAIL_SCOPES))

    async def update() -> None:
        connection = await asyncpg.connect(settings.database_url)
        try:
            await connection.execute(
                "UPDATE users SET google_access_token_enc=$1, google_refresh_token_enc=$2, "
                "google_token_expires_at=$3, google_scopes=$4 WHERE email=$5",
                access, refresh, datetime.now(UTC) + timedelta(hours=1),
                " ".join(["openid", "email", "profile", *GMAIL_SCOPES]), email)
        finally:
            await connection.close()

    asyncio.run(update())


def approve_a_proposed_draft(app_process: AppProcess, fake_openai: FakeOpenAI,
                             fake_gmail: FakeGmail, driver: Any, wait: Any) -> None:
    """The email agent proposes a reply; nothing is in Gmail until the user approves it in
    the page (after editing the body); then the draft is in the fake Gmail, unsent."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    connect_fake_gmail(app_process, fake_gmail, "eve@example.com")
    bob = fake_gmail.add_email("Bob <bob@example.com>", "Lunch tomorrow?", "Noon?",
                               extra_headers=[{"name": "Reply-To",
                                               "value": "collector@elsewhere.example"}])
    Select(driver.find_element(By.ID, "agent-select")).select_by_value("email")
    driver.find_element(By.ID, "new-conversation").click()
    fake_openai.enqueue(
        Reply(tool_calls=[ToolCall("create_draft_reply",
                                   {"message_id": bob.id, "body": "Noon works."})]),
        Reply(content="I proposed a reply to Bob for you to review."))
    box = driver.find_element(By.ID, "message-input")
    box.send_keys("Draft a reply to Bob saying noon works")
    driver.find_element(By.ID, "send").click()

    card = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "form.proposal")))
    to = card.find_element(By.NAME, "to")
    assert to.get_attribute("value") == "bob@example.com"  # From, not Reply-To
    assert card.find_element(By.NAME, "subject").get_attribute("value") == "Re: Lunch tomorrow?"
    body = card.find_element(By.NAME, "body")
    assert body.get_attribute("value") == "Noon works."
    assert fake_gmail.drafts == []  # proposed, not written
    body.clear()
    body.send_keys("Noon works. See you there!")
    driver.save_screenshot(str(ARTIFACTS / "e2e-proposal.png"))
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait.until(ec.text_to_be_present_in_element(
        (By.CSS_SELECTOR, "form.proposal .proposal-status"), "Saved to your Gmail drafts"))
    [draft] = fake_gmail.drafts
    assert draft.message["To"] == "bob@example.com"
    assert draft.message["Subject"] == "Re: Lunch tomorrow?"
    assert draft.message.get_content().strip() == "Noon works. See you there!"
    assert draft.thread_id == bob.thread_id
    assert fake_gmail.send_attempts == []


def run_browser_journey(app_process: AppProcess, fake_openai: FakeOpenAI,
                        fake_gmail: FakeGmail, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: Any = browser
    wait = WebDriverWait(driver, 40)  # generous: 2 shared cores in CI
    # The mock's default user has no email_verified claim, which the app refuses.
    httpx.put(f"{app_process.provider_url}/users/eve@example.com",
              json={"email": "eve@example.com", "email_verified": True},
              timeout=10).raise_for_status()
    driver.get(app_process.base_url + "/")
    sign_in = wait.until(ec.visibility_of_element_located((By.ID, "sign-in")))
    # Every feature is on: no "is off" notice.
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    assert not driver.find_element(By.ID, "features-off").is_displayed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "e2e-signin.png"))
    sign_in.click()

    # The provider's consent form (oidc-provider-mock): type a subject and authorize.
    subject = wait.until(ec.visibility_of_element_located((By.NAME, "sub")))
    subject.send_keys("eve@example.com")
    subject.submit()

    # Back on the page, signed in through the HttpOnly refresh cookie.
    wait.until(ec.text_to_be_present_in_element((By.ID, "user-email"), "eve@example.com"))
    assert driver.current_url == app_process.base_url + "/"

    # Record every text the assistant bubble shows, to prove it grew piece by piece.
    driver.execute_script("""
        window.__bubbleTexts = [];
        new MutationObserver(() => {
          const bubbles = document.querySelectorAll('.message.assistant');
          const last = bubbles[bubbles.length - 1];
          if (last) window.__bubbleTexts.push(last.textContent);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    """)
    fake_openai.enqueue(Reply(content=REPLY, token_delay=0.05))
    box = driver.find_element(By.ID, "message-input")
    box.send_keys("What is new in my inbox?")
    driver.find_element(By.ID, "send").click()

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant")
               and d.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1].text == REPLY
               and not d.find_elements(By.CSS_SELECTOR, ".message.streaming"))
    texts = driver.execute_script("return window.__bubbleTexts")
    partial = {t for t in texts if t and t != REPLY and REPLY.startswith(t)}
    assert len(partial) >= 3, texts  # streamed: several growing prefixes were shown
    request = fake_openai.chat_requests()[-1]
    assert request["stream"] is True
    last = request["messages"][-1]
    assert last["role"] == "user" and last["content"] == "What is new in my inbox?"

    driver.save_screenshot(str(ARTIFACTS / "e2e-chat.png"))

    # Reload: still signed in, the conversation and both messages come back from the DB.
    driver.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "user-email"), "eve@example.com"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message")) == 2)
    user_msg, reply = driver.find_elements(By.CSS_SELECTOR, ".message")
    assert "user" in user_msg.get_attribute("class") and user_msg.text == (
        "What is new in my inbox?")
    assert reply.text == REPLY
    titles = [b.text for b in driver.find_elements(
        By.CSS_SELECTOR, "#conversation-list button")]
    assert titles == ["What is new in my inbox?"]

    approve_a_proposed_draft(app_process, fake_openai, fake_gmail, driver, wait)

    # Sign out, then a reload stays signed out (the refresh cookie is gone and revoked).
    driver.find_element(By.ID, "sign-out").click()
    wait.until(ec.visibility_of_element_located((By.ID, "sign-in")))
    driver.refresh()
    wait.until(ec.visibility_of_element_located((By.ID, "sign-in")))

    # Denying consent at the provider ends on our clear error page, still signed out.
    driver.find_element(By.ID, "sign-in").click()
    deny = wait.until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, "button[name='action'][value='deny']")))
    deny.click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Sign-in cancelled"))
    assert driver.current_url.startswith(app_process.base_url + "/auth/google/callback")
    driver.find_element(By.LINK_TEXT, "Back to the assistant").click()
    wait.until(ec.visibility_of_element_located((By.ID, "sign-in")))

    # The strict CSP held: the browser reported no violations and no script errors.
    logs = driver.get_log("browser")
    app_errors = [entry for entry in logs if entry["level"] == "SEVERE"
                  and app_process.base_url in entry.get("message", "")
                  and "/auth/refresh" not in entry["message"]
                  and "/auth/google/callback" not in entry["message"]]  # the 403 page
    assert not [e for e in logs if "Content Security Policy" in e.get("message", "")
                and app_process.base_url in e.get("message", "")], logs
    assert app_errors == [], app_errors
