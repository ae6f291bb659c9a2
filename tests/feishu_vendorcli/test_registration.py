"""The app-registration device flow against the fake accounts server, one poll answer at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from feishu_vendorcli.registration import AppRegistration, Prompt, RegistrationError, decide

from plugin_host.clock import SystemClock
from tests.feishu_vendorcli.fake_platform import Answer, FakeOpenPlatform

pytestmark = pytest.mark.anyio

PENDING = Answer(400, {"error": "authorization_pending"})
SLOW_DOWN = Answer(400, {"error": "slow_down"})
SUCCESS = Answer(200, {"client_id": "cli_new", "client_secret": "sec_new", "user_info": {"open_id": "ou_owner"}})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenPlatform]:
    platform = FakeOpenPlatform()
    async with platform.running():
        yield platform


async def run(
    fake: FakeOpenPlatform,
    prompts: list[Prompt] | None = None,
    brand: str = "feishu",
    *,
    min_interval: float = 0.1,
    timeout: float = 5.0,
):
    seen = prompts if prompts is not None else []

    async def on_prompt(prompt: Prompt) -> None:
        seen.append(prompt)

    async with httpx.AsyncClient(timeout=5) as http:
        flow = AppRegistration(
            http,
            SystemClock(),
            feishu_accounts=fake.accounts_url,
            lark_accounts=fake.lark_accounts_url,
            slow_down_seconds=0.05,
            min_interval=min_interval,
            timeout=timeout,
        )
        return await flow.run(on_prompt, brand=brand)


async def test_pending_then_success(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [PENDING, PENDING, SUCCESS]
    prompts: list[Prompt] = []
    app = await run(fake, prompts)
    assert (app.app_id, app.app_secret, app.brand, app.owner_open_id) == ("cli_new", "sec_new", "feishu", "ou_owner")
    assert prompts[0].url == fake.begin_answer.body["verification_uri_complete"] and prompts[0].user_code == "ABCD-EFGH"
    assert len(fake.registration_polls()) == 3
    begin = next(c for c in fake.calls if c.body.get("action") == "begin")
    assert begin.body == {
        "action": "begin",
        "archetype": "PersonalAgent",
        "auth_method": "client_secret",
        "request_user_info": "open_id",
    }
    assert begin.headers["content-type"].startswith("application/x-www-form-urlencoded")


async def test_slow_down_adds_to_the_interval(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [SLOW_DOWN, SLOW_DOWN, SUCCESS]
    prompts: list[Prompt] = []
    await run(fake, prompts)
    assert [round(p.interval, 2) for p in prompts] == [0.1, 0.15, 0.2]


async def test_polling_never_runs_hot_whatever_the_server_and_the_config_say(fake: FakeOpenPlatform) -> None:
    fake.begin_answer.body["interval"] = 0
    fake.poll_script = [PENDING, SUCCESS]
    prompts: list[Prompt] = []
    await run(fake, prompts, min_interval=0)
    assert prompts[0].interval == 0.1


async def test_a_huge_answer_is_refused_without_reading_it_whole(fake: FakeOpenPlatform) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:  # a server that never stops sending
            yield b" " * 16384
            await anyio.sleep(0)

    fake.registration_stream = endless
    with pytest.raises(RegistrationError, match="over 65536 bytes") as err:
        await run(fake)
    assert err.value.status == "error"


async def test_a_dripping_answer_ends_at_the_deadline(fake: FakeOpenPlatform) -> None:
    async def drip() -> AsyncIterator[bytes]:
        yield b"{"
        while True:  # a byte now and then: no read timeout ever fires
            await anyio.sleep(0.05)
            yield b" "

    fake.registration_stream = drip
    with pytest.raises(RegistrationError, match="did not answer within 0.5 s"):
        await run(fake, timeout=0.5)


async def test_access_denied_is_an_error(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [PENDING, Answer(400, {"error": "access_denied", "error_description": "user refused"})]
    with pytest.raises(RegistrationError) as err:
        await run(fake)
    assert (err.value.status, err.value.message) == ("error", "user refused")


async def test_expired_token_is_expired(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [Answer(400, {"error": "expired_token"})]
    with pytest.raises(RegistrationError) as err:
        await run(fake)
    assert err.value.status == "expired"


async def test_the_deadline_expires_the_flow(fake: FakeOpenPlatform) -> None:
    fake.begin_answer.body["expires_in"] = 0.2  # every poll stays pending
    with pytest.raises(RegistrationError) as err:
        await run(fake)
    assert err.value.status == "expired" and len(fake.registration_polls()) >= 2


async def test_a_lark_tenant_switches_host_once(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [PENDING, Answer(400, {"error": "authorization_pending", "user_info": {"tenant_brand": "lark"}})]
    fake.lark_poll_script = [
        Answer(400, {"error": "authorization_pending", "user_info": {"tenant_brand": "lark"}}),  # no second switch
        Answer(200, {"client_id": "cli_lark", "client_secret": "sec_lark", "user_info": {"tenant_brand": "lark"}}),
    ]
    prompts: list[Prompt] = []
    app = await run(fake, prompts)
    assert (app.app_id, app.brand) == ("cli_lark", "lark")
    assert len(fake.registration_polls("feishu")) == 2 and len(fake.registration_polls("lark")) == 2
    assert [p.brand for p in prompts] == ["feishu", "lark"]


async def test_init_without_client_secret_is_refused(fake: FakeOpenPlatform) -> None:
    fake.init_answer = Answer(200, {"supported_auth_methods": ["private_key"]})
    with pytest.raises(RegistrationError, match="client_secret"):
        await run(fake)


async def test_begin_refused(fake: FakeOpenPlatform) -> None:
    fake.begin_answer = Answer(400, {"error": "invalid_request", "error_description": "archetype unknown"})
    with pytest.raises(RegistrationError, match="archetype unknown"):
        await run(fake)


async def test_a_failing_server_ends_the_flow_after_a_few_tries(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [Answer(502, {"oops": 1})] * 5
    with pytest.raises(RegistrationError, match="keeps failing"):
        await run(fake)
    assert len(fake.registration_polls()) == 3


async def test_one_failure_is_tolerated(fake: FakeOpenPlatform) -> None:
    fake.poll_script = [Answer(503, {}), SUCCESS]
    assert (await run(fake)).app_id == "cli_new"


def test_decide_unknown_error_and_garbage() -> None:
    assert decide({"error": "weird"}, brand="feishu", switched=False).action == "failed"
    assert decide(None, brand="feishu", switched=False).action == "failed"
    assert decide({"client_id": "x"}, brand="feishu", switched=False).action == "failed"
