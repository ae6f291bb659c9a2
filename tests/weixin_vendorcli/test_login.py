"""The QR login state machine against the fake platform over real HTTP (every status of the table)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from weixin_vendorcli.accounts import Credentials
from weixin_vendorcli.config import load_config
from weixin_vendorcli.ilink import IlinkHttp
from weixin_vendorcli.login import QrLogin, account_base_url

from plugin_host.clock import Clock, FakeClock, SystemClock
from plugin_host.errors import INVALID_PARAMS, RpcError
from plugin_host.protocol import ConnectorSessionView
from tests.support import eventually
from tests.weixin_vendorcli.fake_ilink import FakeIlink, FakeServer, Raw, running_fake

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.views: list[ConnectorSessionView] = []
        self.credentials: list[Credentials] = []

    async def __call__(self, view: ConnectorSessionView, credentials: Credentials | None) -> None:
        self.views.append(view)
        if credentials is not None:
            self.credentials.append(credentials)

    def statuses(self) -> list[str]:
        return [v.status for v in self.views]


class Flow:
    def __init__(self, fake: FakeIlink, servers: list[FakeServer], login: QrLogin, seen: Recorder) -> None:
        self.fake = fake
        self.servers = servers
        self.login = login
        self.seen = seen

    async def status_becomes(self, status: str) -> ConnectorSessionView:
        return await eventually(lambda: self.login.view if self.login.view.status == status else None, 10)

    def polls(self) -> list[Any]:
        return self.fake.of("get_qrcode_status")


@asynccontextmanager
async def flow(
    *,
    clock: Clock | None = None,
    relogin: bool = False,
    tokens: list[str] | None = None,
    hold: float = 0.05,
    **config: Any,
) -> AsyncIterator[Flow]:
    async with running_fake(FakeIlink(hold=hold), servers=2) as (fake, servers):
        cfg = load_config({"baseUrl": servers[0].url, "qrPollIntervalMs": 100, "qrPollTimeoutMs": 2000, **config})
        api = IlinkHttp(cfg)
        seen = Recorder()
        login = QrLogin(
            session_id="cs_1",
            connection_id="conn_1",
            display_name="Bot",
            backend=api,
            config=cfg,
            clock=clock or SystemClock(),
            publish=seen,
            local_tokens=tokens or [],
            relogin=relogin,
        )
        try:
            first = await login.start()
            assert (
                first.status == "qr_ready"
                and first.qr_code == f"https://liteapp.weixin.qq.com/q/{fake.qrcodes[0]}?bot_type=3"
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(login.run)
                yield Flow(fake, servers, login, seen)
                with anyio.fail_after(10):
                    while not login.finished:
                        await anyio.sleep(0.01)
        finally:
            await api.aclose()


async def test_scan_confirm_connects_with_the_credentials() -> None:
    async with flow(tokens=["old-token-1"]) as f:
        assert f.fake.of("get_bot_qrcode")[0].body == {"local_token_list": ["old-token-1"]}
        f.fake.push_status("wait")
        f.fake.push_status("scaned")
        view = await f.status_becomes("scanned")
        assert view.qr_code and view.instructions
        f.fake.push_status(
            "confirmed",
            bot_token="tok-xyz",
            ilink_bot_id="abc@im.bot",
            baseurl=f.servers[0].url,
            ilink_user_id="u@im.wechat",
        )
        view = await f.status_becomes("connected")
    assert view.account_id == "abc@im.bot" and view.display_name == "Bot" and view.qr_code is None
    assert f.seen.credentials == [Credentials("tok-xyz", "abc@im.bot", f.servers[0].url, "u@im.wechat")]
    assert "scanned" in f.seen.statuses() and f.seen.statuses()[-1] == "connected"
    assert all(p.port == f.servers[0].port for p in f.polls())


async def test_verify_code_wrong_then_right() -> None:
    async with flow() as f:
        f.fake.push_status("scaned")
        f.fake.push_status("need_verifycode")
        view = await f.status_becomes("waiting_for_user")
        assert view.metadata["input"] == "verifyCode" and not view.metadata["wrongCode"]
        with pytest.raises(RpcError) as bad:
            f.login.input("12 34; rm")
        assert bad.value.code == INVALID_PARAMS
        f.fake.push_status("need_verifycode")  # the first code is wrong
        assert f.login.input("1111").status == "scanned"
        view = await eventually(lambda: f.login.view if f.login.view.metadata.get("wrongCode") else None)
        assert view.status == "waiting_for_user" and "did not match" in view.instructions[0]
        f.fake.push_status("scaned")
        f.login.input({"verifyCode": "2222"})
        await f.status_becomes("scanned")
        f.fake.push_status("confirmed", bot_token="tok-v", ilink_bot_id="v@im.bot")
        await f.status_becomes("connected")
    codes = [p.query.get("verify_code") for p in f.polls()]
    assert "1111" in codes and "2222" in codes
    assert codes.index("1111") < codes.index("2222")
    after = codes[codes.index("2222") + 1 :]
    assert "2222" not in after[1:]  # accepted (`scaned`): no longer sent


async def test_expired_qr_refreshes_twice_then_the_session_expires() -> None:
    async with flow() as f:
        for n in (1, 2):
            f.fake.push_status("expired")
            await eventually(lambda n=n: len(f.fake.qrcodes) == n + 1)
            view = await eventually(lambda n=n: f.login.view if f.login.view.metadata["qrRefreshes"] == n else None)
            assert view.status == "qr_ready" and f.fake.qrcodes[n] in (view.qr_code or "")
        await eventually(lambda: f.polls()[-1].query["qrcode"] == f.fake.qrcodes[2])  # polling follows the new QR
        f.fake.push_status("expired")
        view = await f.status_becomes("expired")
    assert len(f.fake.qrcodes) == 3 and "expired" in (view.error or "")


async def test_verify_code_blocked_refreshes_the_qr() -> None:
    async with flow() as f:
        f.fake.push_status("need_verifycode")
        await f.status_becomes("waiting_for_user")
        f.fake.push_status("verify_code_blocked")
        f.login.input("9999")
        await eventually(lambda: len(f.fake.qrcodes) == 2)
        view = await eventually(lambda: f.login.view if f.login.view.metadata["qrRefreshes"] == 1 else None)
        assert view.status == "qr_ready" and "wrong numbers" in view.instructions[0]
        f.fake.push_status("confirmed", bot_token="tok-b", ilink_bot_id="b@im.bot")
        await f.status_becomes("connected")
    on_new_qr = [p for p in f.polls() if p.query["qrcode"] == f.fake.qrcodes[1]]
    assert on_new_qr and all("verify_code" not in p.query for p in on_new_qr)  # the blocked code is dropped


async def test_redirect_moves_polling_to_the_redirect_host() -> None:
    async with flow() as f:
        second = f.servers[1]
        f.fake.push_status("scaned_but_redirect", redirect_host=f"127.0.0.1:{second.port}")
        await eventually(lambda: any(p.port == second.port for p in f.polls()))
        f.fake.push_status("confirmed", bot_token="tok-r", ilink_bot_id="r@im.bot")
        await f.status_becomes("connected")
    ports = [p.port for p in f.polls()]
    first_on_second = ports.index(second.port)
    assert set(ports[first_on_second:]) == {second.port}


async def test_redirect_to_something_that_is_not_a_host_is_ignored() -> None:
    async with flow() as f:
        f.fake.push_status("scaned_but_redirect", redirect_host="evil.example/path?x=@")
        f.fake.push_status("confirmed", bot_token="tok-i", ilink_bot_id="i@im.bot")
        await f.status_becomes("connected")
    assert {p.port for p in f.polls()} == {f.servers[0].port}


async def test_binded_redirect_connects_a_relogin_with_its_existing_credentials() -> None:
    async with flow(relogin=True, tokens=["existing-token"]) as f:
        f.fake.push_status("binded_redirect")
        view = await f.status_becomes("connected")
    assert view.error is None and f.seen.credentials == []


async def test_binded_redirect_of_a_new_connection_is_an_error() -> None:
    async with flow(relogin=False) as f:
        f.fake.push_status("binded_redirect")
        view = await f.status_becomes("error")
    assert "already connected" in (view.error or "")


async def test_confirmed_without_a_bot_id_is_an_error() -> None:
    async with flow() as f:
        f.fake.push_status("confirmed", bot_token="tok-n")
        view = await f.status_becomes("error")
    assert f.seen.credentials == [] and "bot id" in (view.error or "")


async def test_gateway_errors_and_garbage_mean_still_waiting() -> None:
    async with flow() as f:
        f.fake.push_status(Raw("<html>524 timeout</html>", status=524, content_type="text/html"))
        f.fake.push_status(Raw('{"status": "sca'))
        f.fake.push_status("mystery_status")
        f.fake.push_status("scaned")
        await f.status_becomes("scanned")
        f.fake.push_status("confirmed", bot_token="tok-g", ilink_bot_id="g@im.bot")
        await f.status_becomes("connected")


def statuses_after_scanning(seen: Recorder) -> list[str]:
    statuses = seen.statuses()
    return statuses[statuses.index("scanned") :]


async def test_a_failed_status_poll_never_shows_the_qr_again_after_the_scan() -> None:
    async with flow() as f:
        f.fake.push_status("scaned")
        f.fake.push_status(Raw("<html>bad gateway</html>", status=502, content_type="text/html"))
        f.fake.push_status(Raw("down", status=500, content_type="text/plain"))
        f.fake.push_status("need_verifycode")
        await f.status_becomes("waiting_for_user")
        f.fake.push_status(Raw("<html>524</html>", status=524, content_type="text/html"))
        f.fake.push_status("scaned")
        f.fake.push_status("confirmed", bot_token="tok-s", ilink_bot_id="s@im.bot")
        f.login.input("4321")
        await f.status_becomes("connected")
    assert "qr_ready" not in statuses_after_scanning(f.seen)


async def test_a_status_poll_timing_out_keeps_the_scanned_status() -> None:
    # the fake holds each poll far longer than the client waits: every poll ends in a client-side timeout
    async with flow(hold=30, qrPollTimeoutMs=200) as f:
        f.fake.push_status("scaned")  # queued before the first poll (one interval away): answered at once
        await f.status_becomes("scanned")
        polls = len(f.polls())
        await eventually(lambda: len(f.polls()) >= polls + 3)  # three polls timed out since
        assert f.login.view.status == "scanned" and f.login.view.qr_code
        f.login.cancel()
    assert "qr_ready" not in statuses_after_scanning(f.seen)


async def test_the_whole_login_has_a_deadline() -> None:
    clock = FakeClock()
    async with flow(clock=clock, loginTimeoutMs=480_000, qrPollIntervalMs=1000) as f:
        await eventually(lambda: clock.sleepers > 0)  # the first poll waits one interval
        clock.advance(479)
        await eventually(lambda: len(f.polls()) >= 1)
        assert f.login.view.status == "qr_ready"
        while not f.login.finished:
            clock.advance(1)
            await anyio.sleep(0.02)
        view = f.login.view
    assert view.status == "expired" and "480 s" in (view.error or "")


async def test_a_login_waiting_for_a_code_also_ends_at_the_deadline() -> None:
    clock = FakeClock()
    async with flow(clock=clock, loginTimeoutMs=1000) as f:
        await eventually(lambda: clock.sleepers > 0)
        clock.advance(0.1)  # past the first interval
        f.fake.push_status("need_verifycode")
        await f.status_becomes("waiting_for_user")
        clock.advance(2)
        view = await f.status_becomes("expired")
    assert view.error


async def test_cancel_stops_polling() -> None:
    async with flow() as f:
        f.fake.push_status("scaned")
        await f.status_becomes("scanned")
        f.login.cancel()
        assert f.login.view.status == "cancelled"
        polls = len(f.polls())
    await anyio.sleep(0.2)
    assert len(f.polls()) <= polls + 1


def test_account_base_url_rules() -> None:
    assert account_base_url(None, "https://ilinkai.weixin.qq.com") == "https://ilinkai.weixin.qq.com"
    assert account_base_url("https://sz.ilinkai.weixin.qq.com/", "https://ilinkai.weixin.qq.com") == (
        "https://sz.ilinkai.weixin.qq.com"
    )
    assert account_base_url("http://plain.example", "https://ilinkai.weixin.qq.com") == "https://ilinkai.weixin.qq.com"
    assert account_base_url("https://u:p@x.example", "https://a.example") == "https://a.example"
    assert account_base_url("http://127.0.0.1:9", "http://127.0.0.1:8") == "http://127.0.0.1:9"
