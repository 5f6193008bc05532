"""A streamed reply in flight when its app host switches completes: the old instance is
stopped only after its streams end (Sanic's graceful shutdown, systemd's stop timeout and
nginx's stream read timeout all follow app_stream_timeout_seconds). The model is the fake
OpenAI server, run on the controller at the test network's gateway, answering slowly."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
from fleet_scenario import (
    APP_HOSTS,
    DATA_HOST,
    MOLECULE_YML,
    PLATFORMS,
    PROJECT_DIR,
    SITE_URL,
    active_ports,
    ca_file,
    output,
    playbook,
    psql,
    remote,
    unit_events,
    unit_timestamp,
)

sys.path.insert(0, str(PROJECT_DIR))
from tests.fakes.openai_server import FakeOpenAI, Reply

testinfra_hosts = [DATA_HOST]

SCENARIO_VARS = MOLECULE_YML["provisioner"]["inventory"]["group_vars"]["all"]
MODEL_URL = httpx.URL(SCENARIO_VARS["app_extra_env"]["OPENAI_BASE_URL"])
# The deploy must switch inside the reply: in a loaded CI run the switch came 67 s after the
# first token. The reply stays under the scenario's stream timeout (150 s).
TOKENS = 110
TOKEN_DELAY_S = 1.0


def access_token(user_id: int) -> str:
    """An access token minted by the app's own code on an app host, with the host's config."""
    script = ("from app.config import load_settings; "
              "from app.auth.tokens import create_access_token; "
              f"print(create_access_token({user_id}, "
              "load_settings(env_file='/opt/assistantapp/current/app.env')))")
    return remote(APP_HOSTS[0]).check_output(
        "runuser -u assistantapp -- /opt/assistantapp/current/venv/bin/python -c %s",
        script).strip().splitlines()[-1]


def read_stream(client: httpx.Client, path: str, events: list[tuple[str, dict]],
                first_token: threading.Event) -> None:
    with client.stream("POST", path, json={"content": "tell me a long story"},
                       headers={"accept": "text/event-stream"}, timeout=300) as response:
        assert response.status_code == 200, response.read()
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "token":
                    first_token.set()
    events.append(("closed", {"at": time.time()}))


def test_a_reply_streaming_while_its_host_switches_completes():
    fake = FakeOpenAI(api_key=SCENARIO_VARS["app_openai_api_key"]).start(
        MODEL_URL.host, MODEL_URL.port)
    try:
        words = [f"word{i} " for i in range(TOKENS)]
        fake.enqueue(Reply(content="".join(words), token_delay=TOKEN_DELAY_S))
        user_id = int(psql(
            "INSERT INTO users (email, name, picture, google_scopes, created_at, updated_at) "
            "VALUES ('stream@fleet.test', 'Stream', '', '', now(), now()) "
            "ON CONFLICT (email) DO UPDATE SET name = 'Stream' RETURNING id").splitlines()[0])
        client = httpx.Client(base_url=SITE_URL, verify=ca_file(), trust_env=False, timeout=30,
                              headers={"authorization": f"Bearer {access_token(user_id)}"})
        created = client.post("/api/conversations", json={})
        assert created.status_code == 201, created.text
        path = f"/api/conversations/{created.json()['conversation']['id']}/messages"

        events: list[tuple[str, dict]] = []
        first_token = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                read_stream(client, path, events, first_token)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        reader = threading.Thread(target=run, daemon=True)
        reader.start()
        assert first_token.wait(60), (errors, fake.requests[-1:] if fake.requests else None)
        # The app host that serves the stream is the one that called the model.
        caller = next(r.client for r in fake.requests if r.path.endswith("/chat/completions"))
        serving = next(name for name in APP_HOSTS if PLATFORMS[name]["address"] == caller)
        ports_before = active_ports(serving)

        started = time.monotonic()
        deploy = playbook("deploy.yml", "--limit", serving, "-e", "app_force_deploy=true")
        deploy_s = time.monotonic() - started
        assert deploy.returncode == 0, output(deploy)[-4000:]
        reader.join(120)
        assert not reader.is_alive() and not errors, errors

        text = "".join(data["text"] for name, data in events if name == "token")
        assert text == "".join(words), text
        assert [name for name, _ in events[-2:]] == ["done", "closed"], events[-3:]
        new_port = [p for p in (8001, 8002) if p not in ports_before]
        assert active_ports(serving) == new_port
        # The host switched while the reply was still streaming, and its old instance
        # stopped only after the reply ended.
        closed_at = events[-1][1]["at"]
        switched = unit_timestamp(serving, f"assistantapp@{new_port[0]}", "ActiveEnterTimestamp")
        old_stopped = unit_events(serving, f"assistantapp@{ports_before[0]}",
                                  closed_at - 600)["stopped"]
        assert switched is not None and len(old_stopped) == 1, (switched, old_stopped)
        assert switched < closed_at <= old_stopped[0] + 1, (switched, closed_at, old_stopped)
        print(f"a {TOKENS * TOKEN_DELAY_S:.0f} s reply survived the deploy of {serving}: "
              f"switched {closed_at - switched:.1f} s before its end, deploy {deploy_s:.1f} s")
    finally:
        fake.stop()
