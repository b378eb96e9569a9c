"""The chat page at / (runtime/static), driven in headless Chromium (Debian's /usr/bin/chromium) through the
python `playwright` package against the real node with the real model. Failures the node cannot be made
to produce on demand (HTTP errors, mid-stream error events, hostile model text) are injected with
page.route."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "tests" / "artifacts"
STATIC = REPO / "runtime" / "static"
EOS_BAN = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end tokens: the answer cannot end by itself
T = 180_000  # generous bound (ms) for anything that waits on real generation


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the chat page tests need Debian's chromium. Install it with "
                    f"`sudo apt-get install -y chromium` (scripts/test.sh does this on a fresh machine).")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    except Exception:
        pw.stop()
        raise
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser, node):
    context = browser.new_context(viewport={"width": 1100, "height": 760}, base_url=node.base_url)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"uncaught error in the page: {e}"))
    pg.on("console", lambda m: problems.append(f"console: {m.text}") if "Content Security Policy" in m.text else None)
    pg.problems = problems
    yield pg
    context.close()
    assert not problems, problems


def open_chat(pg, node, model_id: str = "SmolLM2-135M-Instruct"):
    pg.goto(node.base_url + "/")
    pg.wait_for_function("m => [...document.querySelectorAll('#model option')].some(o => o.value === m)",
                         arg=model_id)
    pg.wait_for_function("() => !document.querySelector('#send').disabled")


def send(pg, text: str) -> None:
    pg.fill("#prompt", text)
    pg.press("#prompt", "Enter")


def wait_idle(pg, timeout: float = T) -> None:
    """The answer is over: no message busy, Send back, Stop gone."""
    pg.wait_for_function("() => !document.querySelector('.message[aria-busy]') && "
                         "!document.querySelector('#send').hidden && document.querySelector('#stop').hidden",
                         timeout=timeout)


def answers(pg) -> list[str]:
    return pg.eval_on_selector_all(".message.assistant .message-body", "els => els.map(e => e.textContent)")


def sse(*pieces: str, done: bool = True, error: dict | None = None, finish: str | None = "stop") -> str:
    """A chat.completion.chunk stream as the node sends it."""
    def chunk(delta: dict, fin: str | None) -> str:
        return "data: " + json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
                                      "model": "SmolLM2-135M-Instruct",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]}) + "\n\n"

    out = chunk({"role": "assistant", "content": ""}, None)
    out += "".join(chunk({"content": p}, None) for p in pieces)
    if error is not None:
        return out + "data: " + json.dumps({"error": error}) + "\n\n"
    if finish:
        out += chunk({}, finish)
    return out + ("data: [DONE]\n\n" if done else "")


def fulfill_sse(body: str):
    def handler(route):
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                      body=body)
    return handler


def in_flight(node) -> tuple[int, int]:
    r = httpx.get(node.base_url + "/api/status", timeout=10).json()["requests"]
    return r["in_flight"], r["queued"]


# -- serving -------------------------------------------------------------------------------------------


def test_page_and_static_files_are_served_safely(node):
    r = httpx.get(node.base_url + "/", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-cache"
    assert "/static/chat.js" in r.text and "/static/chat.css" in r.text
    for name, ctype in [("chat.js", "text/javascript"), ("chat.css", "text/css"), ("chat.html", "text/html")]:
        r = httpx.get(f"{node.base_url}/static/{name}", timeout=10)
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(ctype), (name, r.headers["content-type"])
        assert r.headers["cache-control"] == "no-cache"
        assert r.content == (STATIC / name).read_bytes()
    for bad in ["nope.js", "..%2Fapi%2Fapp.py", "%2e%2e", "..%5Cnode.py", "__init__.py", ".hidden.js"]:
        r = httpx.get(f"{node.base_url}/static/{bad}", timeout=10)
        assert r.status_code == 404, bad
        assert r.json()["error"]["code"] == "not_found"
    r = httpx.get(node.base_url + "/", headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"


def test_same_origin_requests_from_the_page_are_accepted(node, model_id):
    """Chromium sends Origin on the page's POSTs; the node's own origin (127.0.0.1 or localhost) passes."""
    for origin in (node.base_url, f"http://localhost:{node.port}"):
        r = httpx.post(node.v1 + "/chat/completions", headers={"Origin": origin}, timeout=60,
                       json={"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
    r = httpx.post(node.v1 + "/chat/completions", headers={"Origin": "http://evil.example"}, timeout=60,
                   json={"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 403


# -- the page ------------------------------------------------------------------------------------------


def test_picker_lists_the_served_models(page, node, model_id):
    open_chat(page, node, model_id)
    served = [m["id"] for m in httpx.get(node.v1 + "/models", timeout=10).json()["data"]]
    options = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.textContent])")
    assert [v for v, _ in options] == served
    assert dict(options)[model_id] == f"{model_id} · local"
    assert page.input_value("#model") == model_id
    assert page.get_by_label("Model", exact=True).is_enabled()
    assert page.title() == "ClosedMesh chat"


def test_picker_labels_mesh_models(page, node):
    data = [
        {"id": "SmolLM2-135M-Instruct", "object": "model", "closedmesh": {"served_by": "local", "peers": 0,
                                                                          "state": "ready"}},
        {"id": "Qwen3-8B", "object": "model", "closedmesh": {"served_by": "mesh", "peers": 3, "state": "ready"}},
        {"id": "Llama-3.1-8B", "object": "model", "closedmesh": {"served_by": "local+mesh", "peers": 1,
                                                                 "state": "ready"}},
        {"id": "Mistral-7B", "object": "model", "closedmesh": {"served_by": "local", "peers": 0,
                                                               "state": "loading"}},
    ]
    page.route("**/v1/models", lambda r: r.fulfill(json={"object": "list", "data": data}))
    open_chat(page, node)
    labels = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert labels == ["SmolLM2-135M-Instruct · local", "Qwen3-8B · mesh (3 peers)",
                      "Llama-3.1-8B · local + mesh (1 peer)", "Mistral-7B · local (loading)"]


def test_answer_streams_into_the_page_and_history_is_kept(page, node, model_id):
    def bounded(route):  # the page sets no length limit and samples: make the test's answers short and repeatable
        # (80 tokens each, none ending early: a stream long enough that the page sees it grow in steps)
        body = {**json.loads(route.request.post_data), "max_tokens": 80, "logit_bias": EOS_BAN,
                "temperature": 0.3, "seed": 42}
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", bounded)
    open_chat(page, node, model_id)
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    # Count how often the answer's text changes: a streamed answer grows in several steps.
    page.evaluate("""() => {
        window.__growth = 0;
        new MutationObserver(() => window.__growth++).observe(document.querySelector('#conversation'),
            {characterData: true, subtree: true});
    }""")

    send(page, "What is the capital of France?")
    page.wait_for_selector(".message.user >> text=What is the capital of France?")
    page.wait_for_selector("#stop:not([hidden])")
    wait_idle(page)
    first = answers(page)
    assert len(first) == 1 and first[0].strip(), first
    assert page.evaluate("window.__growth") >= 2, "the answer did not arrive as a stream"
    assert page.text_content("#status") == "Answer complete."
    assert page.input_value("#prompt") == ""
    assert sent[0]["stream"] is True and sent[0]["model"] == model_id
    assert sent[0]["messages"] == [{"role": "user", "content": "What is the capital of France?"}]

    send(page, "And of Germany?")
    wait_idle(page)
    both = answers(page)
    assert len(both) == 2 and both[1].strip()
    assert sent[1]["messages"] == [{"role": "user", "content": "What is the capital of France?"},
                                   {"role": "assistant", "content": first[0]},
                                   {"role": "user", "content": "And of Germany?"}]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)

    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    assert page.is_visible("#empty-state")


def test_stop_aborts_a_long_answer_and_the_node_cancels_it(page, node, model_id):
    settings = {"max_tokens": 1500, "logit_bias": EOS_BAN, "temperature": 0}

    def lengthen(route):
        body = json.loads(route.request.post_data)
        body.update(settings)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", lengthen)
    open_chat(page, node, model_id)
    send(page, "Count from 1 to 1000, one number per line.")
    page.wait_for_function("() => (document.querySelector('.message.assistant .message-body')?.textContent"
                           " || '').length > 40", timeout=T)
    wait_for(lambda: in_flight(node)[0] >= 1, 30, what="the node to show the request in flight")
    page.click("#stop")
    wait_idle(page, 30_000)
    at_stop = answers(page)[0]
    assert page.is_visible(".message.assistant .message-note >> text=Stopped.")
    assert page.text_content("#status") == "Stopped."
    assert not page.locator("#conversation [role=alert]").count()
    # The node noticed the disconnect and cancelled the generation.
    wait_for(lambda: in_flight(node) == (0, 0), 30, what="/api/status to show nothing in flight")
    assert answers(page)[0] == at_stop, "text kept arriving after Stop"
    assert len(at_stop) < 4000

    # Usable again; the partial answer is part of the history.
    settings.update(max_tokens=12)
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    send(page, "Say hello.")
    wait_idle(page)
    assert len(answers(page)) == 2 and answers(page)[1].strip()
    assert sent[0]["messages"][1] == {"role": "assistant", "content": at_stop}


def test_http_error_is_shown_plainly_and_retry_works(page, node):
    message = "Every slot is busy and the queue is full; retry in a moment."
    calls = {"n": 0}

    def handler(route):
        calls["n"] += 1
        if calls["n"] == 1:
            route.fulfill(status=503, headers={"Retry-After": "1"},
                          json={"error": {"message": message, "type": "server_error", "param": None,
                                          "code": "overloaded"}})
        else:
            fulfill_sse(sse("Back ", "again."))(route)

    page.route("**/v1/chat/completions", handler)
    open_chat(page, node)
    send(page, "Hello?")
    alert = page.locator(".message.assistant [role=alert]")
    alert.wait_for()
    assert alert.text_content() == f"Error: {message}"
    wait_idle(page)
    assert page.is_enabled("#send")
    page.click(".message.assistant .retry")
    page.wait_for_selector(".message.assistant .message-body >> text=Back again.")
    wait_idle(page)
    assert page.locator("#conversation [role=alert]").count() == 0
    assert page.locator(".message.user").count() == 1


def test_mid_stream_error_event_is_shown_not_a_silent_end(page, node):
    err = {"message": "The model failed while generating: llama_decode returned -1.", "type": "server_error",
           "param": None, "code": "generation_failed"}
    page.route("**/v1/chat/completions", fulfill_sse(sse("Once upon", " a time", error=err)))
    open_chat(page, node)
    send(page, "Tell me a story.")
    alert = page.locator(".message.assistant [role=alert]")
    alert.wait_for()
    assert alert.text_content() == f"Error: {err['message']}"
    assert answers(page) == ["Once upon a time"]
    wait_idle(page)
    assert page.text_content("#status") == "The answer failed."


def test_stream_cut_off_without_done_is_an_error(page, node):
    page.route("**/v1/chat/completions", fulfill_sse(sse("Half an ans", done=False, finish=None)))
    open_chat(page, node)
    send(page, "Hi")
    alert = page.locator(".message.assistant [role=alert]")
    alert.wait_for()
    assert "ended before the node said it was complete" in alert.text_content()


def test_unreachable_node_is_said_plainly(page, node):
    open_chat(page, node)
    page.route("**/v1/chat/completions", lambda r: r.abort("connectionrefused"))
    send(page, "Hi")
    alert = page.locator(".message.assistant [role=alert]")
    alert.wait_for()
    assert "not reachable" in alert.text_content()
    wait_idle(page)

    page.route("**/v1/models", lambda r: r.abort("connectionrefused"))
    page.click("#refresh-models")
    page.wait_for_selector("#banner:not([hidden])")
    assert "not reachable" in page.text_content("#banner")
    assert page.is_disabled("#send")


def test_model_text_is_rendered_as_text_never_html(page, node):
    src = (STATIC / "chat.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser",
                 "createContextualFragment", "eval(", "new Function"):
        assert sink not in src, f"chat.js uses {sink}"

    hostile = ['<img src=x onerror="window.__xss=1">', " <b>bold</b> ", "<script>window.__xss=2</script>"]
    page.route("**/v1/chat/completions", fulfill_sse(sse(*hostile)))
    open_chat(page, node)
    send(page, "<i>not italic</i>")
    wait_idle(page)
    assert answers(page) == ["".join(hostile)]
    assert page.text_content(".message.user .message-body") == "<i>not italic</i>"
    assert page.locator("#conversation img, #conversation b, #conversation i, #conversation script").count() == 0
    assert page.evaluate("window.__xss") is None


def test_narrow_window(browser, node):
    context = browser.new_context(viewport={"width": 360, "height": 720}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    try:
        pg.route("**/v1/chat/completions",
                 fulfill_sse(sse("Paris is the capital of France. " * 6)))
        open_chat(pg, node)
        send(pg, "What is the capital of France? Please answer with a long sentence that wraps.")
        wait_idle(pg, 30_000)
        assert pg.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        for sel in ("#model", "#prompt", "#send", "#new-chat", ".message.assistant .message-body"):
            box = pg.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, (sel, box)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "chat-page-narrow.png"))
    finally:
        context.close()


def test_keyboard_only_use(page, node):
    page.route("**/v1/chat/completions", fulfill_sse(sse("Hi there.")))
    open_chat(page, node)
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type("Hello")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("world")
    assert page.input_value("#prompt") == "Hello\nworld"
    page.keyboard.press("Enter")
    page.wait_for_selector(".message.assistant .message-body >> text=Hi there.")
    wait_idle(page)
    assert page.text_content(".message.user .message-body") == "Hello\nworld"
    # Every control has an accessible name.
    for role, name in [("combobox", "Model"), ("button", "Send"), ("button", "New chat"),
                       ("button", "Refresh the model list"), ("textbox", "Message")]:
        assert page.get_by_role(role, name=name, exact=True).count() == 1, name
    assert re.search(r"\S", page.text_content("#status") or "")


# -- against an entry node: open model list, a key asked for once ---------------------------------------

GOOD_KEY = "cm_" + "k" * 43


class KeyedServer:
    """A test fixture standing in for an entry node's gate (runtime/entry has its own): the product's chat
    page and static files, the real node's model list served openly, and chat answers from the real node
    for requests that carry ``Authorization: Bearer GOOD_KEY``; anything else is answered 401 in the
    OpenAI error shape, as an entry node answers a missing or unknown key. It notes every request's path
    and Authorization header."""

    def __init__(self, node) -> None:
        self.node = node
        self.seen: list[tuple[str, str | None]] = []
        self.port = 0

    def app(self):
        from aiohttp import ClientSession, ClientTimeout, web

        from runtime.api import chat_page

        async def note(request, handler):
            self.seen.append((request.path, request.headers.get("Authorization")))
            return await handler(request)

        async def models(request):
            async with ClientSession() as s, s.get(self.node.v1 + "/models") as r:
                return web.json_response(await r.json(), status=r.status)

        async def chat(request):
            if request.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
                given = "an unknown key" if request.headers.get("Authorization") else "no key"
                return web.json_response(
                    {"error": {"message": f"This entry node needs an API key (the request carried {given}).",
                               "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
                    status=401)
            body = await request.json()
            body.update(max_tokens=24, temperature=0)  # short, repeatable answers from the real model
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async with ClientSession(timeout=ClientTimeout(total=300)) as s, \
                    s.post(self.node.v1 + "/chat/completions", json=body) as r:
                async for piece in r.content.iter_any():
                    await resp.write(piece)
            await resp.write_eof()
            return resp

        app = web.Application(middlewares=[web.middleware(note)])
        app.add_routes(chat_page.routes)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat)
        return app

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def keyed(node):
    import asyncio
    import threading

    from aiohttp import web

    server = KeyedServer(node)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(server.app())

    async def start():
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.port = site._server.sockets[0].getsockname()[1]

    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def stored_key(pg) -> str | None:
    return pg.evaluate("() => localStorage.getItem('closedmesh.chat.apiKey')")


def test_local_node_never_asks_for_a_key_nor_sends_one(page, node, model_id):
    page.route("**/v1/chat/completions", fulfill_sse(sse("Hello.")))
    headers: list[str | None] = []
    page.on("request", lambda r: headers.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    open_chat(page, node, model_id)
    send(page, "Hi")
    page.wait_for_selector(".message.assistant .message-body >> text=Hello.")
    wait_idle(page)
    assert page.is_hidden("#key-panel") and page.is_hidden("#forget-key")
    assert stored_key(page) is None
    assert headers and not any(headers), headers


def test_entry_lists_models_openly_then_asks_for_a_key_once(browser, keyed, node, model_id):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"uncaught error in the page: {e}"))
    requests: list[tuple[str, str | None]] = []
    pg.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
    try:
        # the open model list, before any key is given
        open_chat(pg, keyed, model_id)
        assert pg.is_hidden("#key-panel") and pg.is_hidden("#forget-key") and stored_key(pg) is None
        served = [m["id"] for m in httpx.get(node.v1 + "/models", timeout=10).json()["data"]]
        assert pg.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == served

        # the first answer is refused: the page asks for a key and says why
        send(pg, "What is the capital of France?")
        pg.wait_for_selector("#key-panel:not([hidden])")
        assert "needs an API key (the request carried no key)" in pg.text_content("#key-reason")
        assert pg.evaluate("document.activeElement.id") == "api-key"
        wait_idle(pg)
        assert pg.text_content("#status") == "Waiting for an API key."
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "chat-page-key.png"))

        # a wrong key is refused in turn, and said so
        pg.fill("#api-key", "cm_wrong")
        pg.click("#key-save")
        pg.wait_for_function("() => document.querySelector('#key-reason').textContent.includes('saved key was "
                             "refused')")
        wait_idle(pg)

        # the right key: the same message goes again and the real model answers
        pg.fill("#api-key", GOOD_KEY)
        pg.press("#api-key", "Enter")
        pg.wait_for_function("() => (document.querySelector('.message.assistant:not(.failed) .message-body')"
                             "?.textContent || '').trim().length > 0", timeout=T)
        wait_idle(pg)
        assert pg.is_hidden("#key-panel") and pg.is_visible("#forget-key")
        assert stored_key(pg) == GOOD_KEY
        assert pg.locator(".message.user").count() == 1 and pg.locator("#conversation [role=alert]").count() == 0
        assert pg.text_content("#status") == "Answer complete."

        # asked once: after a reload the stored key is used without asking
        pg.reload()
        open_chat(pg, keyed, model_id)
        send(pg, "And of Germany?")
        wait_idle(pg)
        assert pg.is_hidden("#key-panel") and len(answers(pg)) == 1 and answers(pg)[0].strip()

        # forgotten: gone from storage, and the next answer asks again
        pg.click("#forget-key")
        assert stored_key(pg) is None and pg.is_hidden("#forget-key")
        send(pg, "Hi again")
        pg.wait_for_selector("#key-panel:not([hidden])")
        wait_idle(pg)
        pg.click("#key-cancel")
        assert pg.is_hidden("#key-panel") and stored_key(pg) is None
    finally:
        context.close()
    assert not problems, problems
    # the key went only to this page's own origin, only as an Authorization header, never in a URL
    assert all(url.startswith(keyed.base_url + "/") for url, _ in requests), requests
    assert not any(GOOD_KEY in url for url, _ in requests)
    keyed_paths = [(p, a) for p, a in keyed.seen if a == f"Bearer {GOOD_KEY}"]
    assert {p for p, _ in keyed_paths} >= {"/v1/chat/completions"}
    assert {a for _, a in keyed.seen} <= {None, "Bearer cm_wrong", f"Bearer {GOOD_KEY}"}
    # before any key was given, the model list was fetched without one
    assert keyed.seen[[p for p, _ in keyed.seen].index("/v1/models")][1] is None


def test_page_fetches_only_paths_of_its_own_origin():
    """Every request of the page goes through apiFetch, which takes a path, never a URL: the key cannot
    be sent to another origin. (The CSP's connect-src 'self' refuses one as well.)"""
    src = (STATIC / "chat.js").read_text()
    assert src.count("fetch(") == 1 and src.count("apiFetch(") == 3  # one fetch, in apiFetch; its two callers
    for other in ("XMLHttpRequest", "EventSource", "sendBeacon", "WebSocket", "import("):
        assert other not in src, other
    assert 'path.startsWith("/") || path.startsWith("//")' in src and 'mode: "same-origin"' in src
    assert re.findall(r'apiFetch\("([^"]+)"', src) == ["/v1/models", "/v1/chat/completions"]
