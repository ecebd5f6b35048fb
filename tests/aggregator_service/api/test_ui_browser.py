"""The dashboard in headless Chromium: live rows and rounds, heatmap, curves, restart, tokens.

One aggregator (uvicorn in a thread, tokens on) serves most of the module's tests; three
clients fetch the model and post known updates over HTTP, so the test decides when each
row changes. The page is opened once and never reloaded: everything it shows after that
comes through its event stream. A last test follows a short run of real worker processes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from shared.config import load_config
from shared.evaluation import EvalResult
from shared.runs.launch import Fleet
from shared.runs.layout import child_env, virtual_worker_argv
from tests.aggregator_service.helpers import MSGPACK, experiment, shifted, update_body
from tests.aggregator_service.serving import bearer, serve, write_tokens

playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium; make test does)"
)

# A closed network: without these, Chromium's own background connections are refused.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "admin-" + "0123456789abcdefghijklmnopqrstuvwxyz"
VIEWER = "viewer-" + "zyxwvutsrqponmlkjihgfedcba9876543210"
CLIENTS = ("c1", "c2", "c3")
LIVE_MS = 1000  # the page shows a change within a second
# A stream ends after STREAM_S and the page opens the next: a server told to stop then
# sees every stream end by itself before SHUTDOWN_S, and closes without cutting any.
STREAM_S = 2.0
SHUTDOWN_S = 10
START_MS = 10_000  # the first load, and a restart


def evaluate(weights: Mapping[str, np.ndarray]) -> EvalResult:
    """A stand-in for server-side evaluation: numbers that move with the model."""
    mean = float(np.mean([np.mean(w) for w in weights.values()]))
    return EvalResult(
        loss=round(1.0 + mean, 6), accuracy=round(0.5 + 10 * abs(mean), 6), num_examples=1
    )


class Aggregator:
    """An aggregator on a fixed port and state dir that a test can restart."""

    def __init__(self, tmp: Path) -> None:
        self.tokens = write_tokens(tmp / "tokens.txt", *CLIENTS)
        self.settings = AggregatorSettings(
            state_dir=tmp / "state",
            tokens_file=tmp / "tokens.txt",
            admin_token=ADMIN,
            viewer_token=VIEWER,
            long_poll_max_s=STREAM_S,
        )
        self.config = experiment(num_rounds=4, min_fit_clients=3, min_available_clients=3)
        self.port = 0
        self.url = ""
        self._serving: Any = None

    def start(self) -> None:
        app = create_app(self.settings, self.config, evaluator=evaluate)
        self._serving = serve(app, port=self.port, timeout_graceful_shutdown=SHUTDOWN_S)
        self.url, _ = self._serving.__enter__()
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        self._serving.__exit__(None, None, None)

    def get(self, path: str, **params: Any) -> httpx.Response:
        reply = httpx.get(f"{self.url}{path}", params=params, headers=bearer(ADMIN), timeout=10)
        assert reply.status_code == 200, reply.text
        return reply

    def as_client(self, cid: str) -> dict[str, str]:
        return bearer(self.tokens[cid])

    def register(self, cid: str) -> None:
        reply = httpx.post(
            f"{self.url}/register", json={"client_id": cid}, headers=self.as_client(cid)
        )
        assert reply.status_code == 200, reply.text

    def fetch(self, cid: str) -> None:
        headers = self.as_client(cid)
        reply = httpx.get(f"{self.url}/get_weights", params={"client_id": cid}, headers=headers)
        assert reply.status_code == 200, reply.text

    def post(self, cid: str, server_round: int, shift: float) -> None:
        from shared.wire import decode_message, decode_weights

        model = httpx.get(f"{self.url}/get_weights", headers=bearer(ADMIN), timeout=10)
        weights = decode_weights(decode_message(model.content)["weights"])
        body = update_body(cid, server_round, shifted(weights, shift))
        reply = httpx.post(
            f"{self.url}/receive", content=body, headers={**MSGPACK, **self.as_client(cid)}
        )
        assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def aggregator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aggregator]:
    running = Aggregator(tmp_path_factory.mktemp("dashboard"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser: Any, aggregator: Aggregator) -> Iterator[Any]:
    """The page, logged in with the viewer token; opened once for the module."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.goto(f"{aggregator.url}/ui")
    opened.locator("#token").fill(VIEWER)
    opened.locator("#login button").click()
    expect(opened.locator("#board")).to_be_visible(timeout=START_MS)
    yield opened
    context.close()
    assert errors == []


def expect(locator: Any) -> Any:
    return playwright_api.expect(locator)


def row(page: Any, cid: str) -> Any:
    return page.locator(f'#clients tr[data-client="{cid}"]')


def fact(page: Any, name: str) -> Any:
    return page.locator(f'#run [data-fact="{name}"] dd')


def test_the_page_follows_clients_and_rounds_without_reloading(
    page: Any, aggregator: Aggregator
) -> None:
    assert VIEWER not in page.content()  # the token never appears in the page
    for cid in CLIENTS:
        aggregator.register(cid)
    expect(fact(page, "Round")).to_have_text("1 of 4", timeout=START_MS)
    expect(fact(page, "Phase")).to_have_text("training", timeout=START_MS)
    for server_round in (1, 2):
        for k, cid in enumerate(CLIENTS):
            aggregator.fetch(cid)
            expect(row(page, cid)).to_have_attribute("data-state", "training", timeout=LIVE_MS)
            aggregator.post(cid, server_round, 0.01 * (k + 1))
            if k < len(CLIENTS) - 1:
                expect(row(page, cid)).to_have_attribute("data-state", "reported", timeout=LIVE_MS)
        expect(fact(page, "Round")).to_have_text(f"{server_round + 1} of 4", timeout=LIVE_MS)
    expect(row(page, "c1").locator("td").nth(4)).to_have_text("0.5000")  # its train loss
    history = aggregator.get("/history").json()
    assert [r["round"] for r in history] == [1, 2]
    check_heatmap_and_curves(page, history)


def check_heatmap_and_curves(
    page: Any, history: list[dict[str, Any]], clients: tuple[str, ...] = CLIENTS
) -> None:
    """The heatmap has a cell per client and round; each curve ends at /history's last row."""
    rounds = len(history)
    expect(page.locator("#heatmap .heat-cell")).to_have_count(len(clients) * rounds)
    cell = page.locator("#heatmap tbody tr").first.locator(".heat-cell").last
    assert float(cell.inner_text()) == pytest.approx(
        history[-1]["clients"][clients[0]]["received_s"], abs=0.05
    )
    last = history[-1]
    for chart, series, key in [
        ("accuracy", "accuracy", "eval_accuracy"),
        ("loss", "global loss", "eval_loss"),
        ("loss", "mean client train loss", "train_loss"),
        ("bytes", "up (updates)", "bytes_in"),
    ]:
        dot = page.locator(f'[data-chart="{chart}"] circle[data-series="{series}"]')
        expect(dot).to_have_attribute("data-x", str(last["round"]))
        assert float(dot.get_attribute("data-y")) == pytest.approx(last[key]), (chart, series)


def test_the_page_recovers_after_the_aggregator_restarts(page: Any, aggregator: Aggregator) -> None:
    aggregator.stop()
    expect(page.locator("#connection")).to_contain_text("reconnecting", timeout=START_MS)
    aggregator.start()  # the same port and state dir: the run resumes
    expect(page.locator("#connection")).to_contain_text("live", timeout=START_MS)
    for cid in CLIENTS:  # workers come back after a restart
        aggregator.register(cid)
    expect(fact(page, "Round")).to_have_text("3 of 4", timeout=START_MS)
    expect(fact(page, "Phase")).to_have_text("training", timeout=START_MS)
    expect(page.locator("#heatmap .heat-cell")).to_have_count(len(CLIENTS) * 2)
    for k, cid in enumerate(CLIENTS):
        aggregator.post(cid, 3, 0.01 * (k + 1))
    expect(fact(page, "Round")).to_have_text("4 of 4", timeout=LIVE_MS * 3)
    check_heatmap_and_curves(page, aggregator.get("/history").json())


def test_the_page_asks_for_a_token_and_refuses_a_wrong_one(
    browser: Any, aggregator: Aggregator
) -> None:
    context = browser.new_context()  # a new session: no token kept
    fresh = context.new_page()
    fresh.goto(f"{aggregator.url}/")  # a browser asking for HTML is sent to /ui
    assert fresh.url.endswith("/ui")
    expect(fresh.locator("#login")).to_be_visible(timeout=START_MS)
    expect(fresh.locator("#board")).to_be_hidden()
    assert fresh.locator("#clients tbody tr").count() == 0
    fresh.locator("#token").fill("wrong-" + "0123456789abcdefghijklmnopqrstuvwxyz")
    fresh.locator("#login button").click()
    expect(fresh.locator("#login-reason")).to_contain_text("refused", timeout=START_MS)
    expect(fresh.locator("#board")).to_be_hidden()
    context.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_page_works_over_tls(browser: Any, tmp_path: Path) -> None:
    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = AggregatorSettings(state_dir=tmp_path / "state", long_poll_max_s=STREAM_S)
    app = create_app(settings, experiment())
    with serve(app, certfile=cert, keyfile=key, timeout_graceful_shutdown=SHUTDOWN_S) as (url, _):
        context = browser.new_context(ignore_https_errors=True)  # a self-signed test cert
        secure = context.new_page()
        secure.goto(f"{url}/ui")
        expect(secure.locator("#connection")).to_contain_text("live", timeout=START_MS)
        expect(fact(secure, "Phase")).to_have_text("waiting")
        context.close()


WORKERS_RUN = """
name: dashboard-workers
dataset: synthetic
synthetic: {channels: 1, image_size: 8, num_classes: 4, train_size: 200, test_size: 50}
num_partitions: 2
model: mlp
num_rounds: 3
min_fit_clients: 2
min_available_clients: 2
local_epochs: 1
server_eval: false
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_page_follows_real_workers(browser: Any, tmp_path: Path, mode: str) -> None:
    config_path = tmp_path / "run.yaml"
    extra = "mode: async\nasync: {buffer_size: 2}\n" if mode == "async" else ""
    config_path.write_text(WORKERS_RUN + extra)
    config = load_config(config_path)
    settings = AggregatorSettings(state_dir=tmp_path / "state", long_poll_max_s=STREAM_S)
    app = create_app(settings, config, evaluator=evaluate)
    with serve(app, timeout_graceful_shutdown=SHUTDOWN_S) as (url, _), Fleet() as fleet:
        context = browser.new_context()
        watching = context.new_page()
        watching.goto(f"{url}/ui")
        expect(fact(watching, "Phase")).to_have_text("waiting", timeout=START_MS)
        argv = virtual_worker_argv(
            config_path, url=url, first=0, last=1, num_partitions=2, train_slots=1
        )
        fleet.start("workers", argv, log_path=tmp_path / "workers.log", env=child_env(worker=True))
        expect(watching.locator("#clients tr[data-client]")).to_have_count(2, timeout=60_000)
        expect(fact(watching, "Phase")).to_have_text("finished", timeout=60_000)
        history = httpx.get(f"{url}/history", timeout=10).json()
        assert [r["round"] for r in history] == [1, 2, 3]
        check_heatmap_and_curves(watching, history, clients=("0", "1"))
        expect(fact(watching, "Mode")).to_have_text(mode)
        if mode == "async":  # staleness is plotted when the rows carry it
            dot = watching.locator('[data-chart="staleness"] circle[data-series="staleness"]')
            assert float(dot.get_attribute("data-y")) == history[-1]["staleness"]["mean"]
        context.close()
