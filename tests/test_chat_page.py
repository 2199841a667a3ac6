"""The chat page at `/` of `pacos serve`, driven in headless Chromium (Playwright on the system browser, no
browser download) against a real server on loopback that has an API key, over the tiny random Llama."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pacos.infer import Event, TorchEngine
from pacos.infer.sampling import SamplingParams
from pacos.infer.scheduler import QueueFull, Scheduler
from pacos.serve import create_app
from tests.test_serve import API_KEY, Served, call

MODEL = "tiny"
STEP_DELAY_S = 0.01  # per decode step: a long answer lasts seconds, so Stop lands mid-stream
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# Model output that would run script if it reached the DOM as markup (the server sends it as an answer).
HOSTILE = """# Safe rendering

Model output with **bold**, *italic* and `inline <b>code</b>`:

- <script>window.__xss = 1</script>
- <img src=x onerror="window.__xss = 2">
- [a link](https://example.com/docs) and [not a link](javascript:window.__xss=3)

```html
<script>window.__xss = 4</script>
```
"""


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> TorchEngine:
    return TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def server(engine: TorchEngine):
    scheduler = Scheduler(engine, max_batch_size=4, max_waiting=16).start()
    step = scheduler.decoder.step

    def slow_step() -> None:
        time.sleep(STEP_DELAY_S)
        step()

    scheduler.decoder.step = slow_step  # type: ignore[method-assign]
    served = Served(create_app(engine, scheduler, api_key=API_KEY, model_name=MODEL))
    yield SimpleNamespace(port=served.port, url=f"http://127.0.0.1:{served.port}/", scheduler=scheduler)
    served.stop()
    scheduler.stop()


@pytest.fixture(scope="module")
def browser():
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.skip("no Chromium here (.ci/run installs it from Debian packages)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(server, browser: Browser):
    """A fresh browser profile (empty storage) on the chat page, the key entered when it asks."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url.rstrip("/"))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key", API_KEY)
    page.press("#key", "Enter")
    expect(page.locator("#model")).to_have_text(MODEL)
    yield page
    context.close()
    assert errors == [], errors  # no uncaught exception in the page's script


def settings(page: Page, **values: Any) -> None:
    page.locator("#settings").evaluate("el => el.open = true")
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def answered(page: Page, count: int) -> None:
    """Wait until the conversation holds `count` finished answers (each shows its stats line)."""
    expect(page.locator(".message.assistant .stats")).to_have_count(count, timeout=15_000)
    expect(page.locator("#stop")).to_be_hidden()


def stored(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("JSON.parse(localStorage.getItem('pacos.chat.conversations'))")


def health(port: int) -> dict[str, Any]:
    return call(port, "GET", "/health", key=None)[2]


def reference(engine: TorchEngine, messages: list[dict[str, str]], **params: Any) -> str:
    ids = engine.encode_chat(messages)
    return engine.generate([ids], SamplingParams(stop=engine.chat_stops(), **params))[0].text


def test_the_page_is_served_without_a_key_and_the_api_still_needs_one(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    html = response.read().decode()
    assert response.status == 200 and response.getheader("content-type").startswith("text/html")
    assert "script-src 'self'" in response.getheader("content-security-policy")
    assert '<script src="/static/app.js"' in html and "http" not in html.replace("http-equiv", "")  # no CDN
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        conn.request("GET", f"/static/{name}")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith(kind)
        assert "//cdn" not in response.read().decode()
    conn.request("GET", "/static/..%2Fpage.py")
    response = conn.getresponse()
    assert response.status == 404 and json.loads(response.read())["error"]["code"] == "not_found"
    assert call(server.port, "GET", "/v1/models", key=None)[0] == 401
    schema = call(server.port, "GET", "/openapi.json", key=None)[2]
    assert "/" not in schema["paths"]


def test_a_conversation_streams_stops_regenerates_is_edited_and_survives_a_reload(server, browser, engine):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    # The key is asked for: a wrong one is refused and asked for again.
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key", "wrong")
    page.press("#key", "Enter")
    expect(page.locator("#key-error")).to_have_text("The server refused that key.")
    page.fill("#key", API_KEY)
    page.press("#key", "Enter")
    expect(page.locator("#model")).to_have_text(MODEL)
    expect(page.locator("#key-dialog")).to_be_hidden()

    system = "Answer briefly."
    settings(page, system=system, temperature=0, max_tokens=24)
    # Every length the answer's text had on screen: a streamed answer grows in several steps.
    page.evaluate("""() => {
        window.seen = new Set();
        new MutationObserver(() => {
            const body = document.querySelector('.message.assistant:last-child .body');
            if (body) window.seen.add(body.textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true});
    }""")
    send(page, "Hello")
    answered(page, 1)
    first = reference(engine, [{"role": "system", "content": system}, {"role": "user", "content": "Hello"}],
                      max_new_tokens=24)  # fmt: skip
    [conv] = stored(page)
    assert conv["system"] == system and conv["title"] == "Hello"
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][1]["content"] == first and first.strip()
    assert conv["messages"][1]["stats"]["tokens"] == 24 and not conv["messages"][1]["stats"]["counted"]
    assert page.locator(".message.assistant .body").inner_text().strip() == first.strip()
    assert "tokens/s" in page.locator(".message.assistant .stats").inner_text()
    seen = page.evaluate("[...window.seen]")
    assert len([n for n in seen if 0 < n < len(first.strip())]) >= 2, seen  # it streamed

    # A long answer, stopped mid-stream: the server drops the sequence at once.
    settings(page, max_tokens=1500)
    send(page, "Tell me more")
    page.wait_for_function(
        "() => document.querySelector('.message.assistant:last-child .body').textContent.length >= 10"
    )
    assert health(server.port)["running"] == 1
    page.click("#stop")
    clicked = time.monotonic()
    while health(server.port)["running"] and time.monotonic() - clicked < 5:
        time.sleep(0.02)
    assert health(server.port)["running"] == 0
    assert time.monotonic() - clicked <= 1.0, "the server kept generating after Stop"
    answered(page, 2)
    assert page.locator(".message.assistant .stats").last.inner_text().startswith("Stopped")
    stopped = stored(page)[0]["messages"][-1]
    assert stopped["stopped"] and 10 <= len(stopped["content"]) < 1500

    # Regenerate replaces the stopped answer, with the sampling settings as they are now.
    settings(page, temperature=1, top_p=0.9, max_tokens=16, seed=7)
    page.click("#regenerate")
    answered(page, 2)
    history = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Tell me more"},
    ]
    want = reference(engine, history, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    messages = stored(page)[0]["messages"]
    assert len(messages) == 4 and messages[-1]["content"] == want and "stopped" not in messages[-1]

    # Editing the first message resends it and drops what followed.
    page.locator(".message.user .edit").first.click()
    page.fill(".message.user textarea", "Hi there")
    page.press(".message.user textarea", "Enter")
    answered(page, 1)
    [conv] = stored(page)
    want = reference(engine, [history[0], {"role": "user", "content": "Hi there"}], max_new_tokens=16,
                     temperature=1.0, top_p=0.9, seed=7)  # fmt: skip
    assert [m["content"] for m in conv["messages"]] == ["Hi there", want] and conv["title"] == "Hi there"

    # A reload keeps the conversation (localStorage) and the key (this tab's sessionStorage only).
    page.reload()
    expect(page.locator("#model")).to_have_text(MODEL)
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#conversations li")).to_have_text(["Hi there✎×"])
    expect(page.locator(".message .body").first).to_have_text("Hi there")
    expect(page.locator(".message.assistant .stats")).to_have_count(1)
    assert page.input_value("#system") == system and page.input_value("#seed") == "7"
    assert page.evaluate("sessionStorage.getItem('pacos.chat.key')") == API_KEY
    assert API_KEY not in page.evaluate("JSON.stringify(localStorage)")
    page.close()
    assert health(server.port)["running"] == 0 and errors == []


def script_answer(server, engine: TorchEngine, monkeypatch, keyword: str, answer: str) -> None:
    """The server answers `answer`, in small streamed pieces, to a prompt holding `keyword`."""
    submit = server.scheduler.submit

    def scripted(ids: list[int], params: SamplingParams, on_event: Any) -> Any:
        if keyword not in engine.tokenizer.decode(ids):
            return submit(ids, params, on_event)
        seq = engine.new_sequence(ids, params, on_event)

        def stream() -> None:
            pieces = [answer[i : i + 7] for i in range(0, len(answer), 7)]
            for piece in pieces:
                time.sleep(0.005)
                seq.emit(Event(piece, [], []))
            seq.emit(
                Event(
                    text="",
                    token_ids=[],
                    logprobs=[],
                    finish_reason="stop",
                    prompt_tokens=len(ids),
                    completion_tokens=len(pieces),
                )
            )

        threading.Thread(target=stream, daemon=True).start()
        return seq

    monkeypatch.setattr(server.scheduler, "submit", scripted)


def test_model_output_is_rendered_as_text_never_as_markup(page: Page, server, engine, monkeypatch):
    script_answer(server, engine, monkeypatch, "markdown", HOSTILE)
    send(page, "Show me some markdown")
    answered(page, 1)
    answer = page.locator(".message.assistant .body")
    for _ in range(2):  # as streamed, then as rendered again from localStorage
        assert page.evaluate("window.__xss") is None
        assert page.locator("#messages script, #messages img, #messages b").count() == 0
        text = answer.inner_text()
        assert "<script>window.__xss = 1</script>" in text
        assert '<img src=x onerror="window.__xss = 2">' in text
        assert "[not a link](javascript:window.__xss=3)" in text
        expect(answer.locator("h1")).to_have_text("Safe rendering")
        expect(answer.locator("strong")).to_have_text("bold")
        expect(answer.locator("em")).to_have_text("italic")
        expect(answer.locator("p code")).to_have_text("inline <b>code</b>")
        expect(answer.locator("li")).to_have_count(3)
        expect(answer.locator("pre code")).to_have_text("<script>window.__xss = 4</script>")
        assert answer.locator("a").evaluate_all("links => links.map(a => a.href)") == [
            "https://example.com/docs"
        ]
        assert stored(page)[0]["messages"][1]["content"] == HOSTILE
        page.reload()
        expect(page.locator("#model")).to_have_text(MODEL)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "chat-page.png"
    page.screenshot(path=str(shot))
    with Image.open(shot) as image:
        assert image.size == (1200, 800)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # text, a code block, a sidebar: not a blank page

    # The copy buttons: a code block's code, a message's markdown source.
    answer.locator("pre .copy-code").click()
    expect(answer.locator("pre .copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "<script>window.__xss = 4</script>"
    page.locator(".message.assistant .meta .copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == HOSTILE


# Lists as models write them: blank lines between items, a paragraph inside an item, a list resumed after a
# paragraph or a nested list. Each "2." used to start a list of its own, shown as a second "1.".
LISTS = """Steps:

1. Install it.

2. Run it
   on one line.

   A second paragraph of step 2.

3. Done.

Then a paragraph, and the list goes on:

4. Four.
5. Five.

Nested:

1. Foo
   - sub a
   - sub b
2. Bar

- x

- y
"""
# Its <p>s: the loose lists' items are paragraphs, as CommonMark renders them.
PARAGRAPHS = ["Steps:", "Install it.", "Run it on one line.", "A second paragraph of step 2.", "Done.",
              "Then a paragraph, and the list goes on:", "Nested:", "x", "y"]  # fmt: skip


def test_ordered_lists_keep_their_numbers(page: Page, server, engine, monkeypatch):
    script_answer(server, engine, monkeypatch, "lists", LISTS)
    send(page, "Show me some lists")
    answered(page, 1)
    answer = page.locator(".message.assistant .body")
    shown = "els => els.map(l => [l.start, [...l.children].map(li => [li.textContent, li.children.length])])"
    for _ in range(2):  # as streamed, then as rendered again from localStorage
        # [start, [[item text, paragraphs]]] per <ol>: a tight list's items hold no <p>.
        assert answer.locator("ol").evaluate_all(shown) == [
            [1, [["Install it.", 1], ["Run it on one line.A second paragraph of step 2.", 2], ["Done.", 1]]],
            [4, [["Four.", 0], ["Five.", 0]]],
            [1, [["Foo", 0]]],
            [2, [["Bar", 0]]],
        ]
        expect(answer.locator("ol").nth(1)).to_have_attribute("start", "4")
        expect(answer.locator("ol").nth(0)).not_to_have_attribute("start", re.compile(".*"))
        expect(answer.locator("ul")).to_have_count(2)  # the nested list, and the loose list of x and y
        expect(answer.locator("ul li")).to_have_text(["sub a", "sub b", "x", "y"])
        expect(answer.locator("p")).to_have_text(PARAGRAPHS)
        page.reload()
        expect(page.locator("#model")).to_have_text(MODEL)


def test_errors_are_shown_and_the_question_is_kept(page: Page, server, monkeypatch):
    status = page.locator("#status")

    def busy(*args: Any, **kwargs: Any) -> Any:
        raise QueueFull("the server is busy: 16 requests are waiting; retry later")

    settings(page, max_tokens=4)
    monkeypatch.setattr(server.scheduler, "submit", busy)
    send(page, "Are you there?")
    expect(status).to_have_text(
        "The server is busy: the server is busy: 16 requests are waiting; retry later. "
        "Press Regenerate to try again."
    )
    expect(page.locator(".message")).to_have_count(1)  # the question, without an empty answer
    monkeypatch.undo()

    settings(page, max_tokens=5000)
    page.click("#regenerate")
    expect(status).to_contain_text("The server refused the request: This model's maximum context length")

    page.route("**/v1/chat/completions", lambda route: route.abort())
    settings(page, max_tokens=4)
    page.click("#regenerate")
    expect(status).to_contain_text("Network error")
    page.unroute("**/v1/chat/completions")

    page.evaluate("sessionStorage.setItem('pacos.chat.key', 'revoked')")
    page.click("#regenerate")
    expect(status).to_have_text("The server needs its API key: enter it, then press Regenerate.")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key", API_KEY)
    page.press("#key", "Enter")
    page.click("#regenerate")
    answered(page, 1)
    expect(status).to_be_hidden()
    assert [m["role"] for m in stored(page)[0]["messages"]] == ["user", "assistant"]


def test_enter_during_ime_composition_does_not_send(page: Page):
    settings(page, max_tokens=4)
    page.fill("#input", "你好")
    # What Chromium sends for the Enter that picks a candidate; the second form is older browsers'.
    for init in ("{isComposing: true}", "{keyCode: 229}"):
        event = f"new KeyboardEvent('keydown', {{key: 'Enter', ...{init}, bubbles: true, cancelable: true}})"
        page.eval_on_selector("#input", f"el => el.dispatchEvent({event})")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("世界")
    expect(page.locator(".message")).to_have_count(0)
    assert page.input_value("#input") == "你好\n世界"
    page.press("#input", "Enter")
    answered(page, 1)
    expect(page.locator(".message.user .body")).to_have_text("你好\n世界")


def test_conversations_switch_rename_delete_export_and_import(page: Page, tmp_path: Path):
    settings(page, max_tokens=4)
    send(page, "first question")
    answered(page, 1)
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    send(page, "second question")
    answered(page, 1)
    titles = page.locator("#conversations .title")
    expect(titles).to_have_text(["second question", "first question"])  # the latest first

    page.locator("#conversations li").nth(1).locator(".rename").click()
    page.fill("#conversations input", "Renamed")
    page.press("#conversations input", "Enter")
    expect(titles).to_have_text(["second question", "Renamed"])
    titles.nth(1).click()
    expect(page.locator(".message.user .body")).to_have_text("first question")

    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "chats.json"
    download.value.save_as(exported)
    data = json.loads(exported.read_text())
    assert data["format"] == "pacos-chat"
    assert sorted(c["title"] for c in data["conversations"]) == ["Renamed", "second question"]

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#conversations li").nth(1).locator(".delete").click()
    expect(titles).to_have_text(["second question"])
    assert [c["title"] for c in stored(page)] == ["second question"]

    page.set_input_files("#import", exported)
    expect(page.locator("#status")).to_have_text("Imported 2 conversations.")
    expect(titles).to_have_count(2)  # the kept one replaced by its copy, the deleted one back
    assert sorted(c["title"] for c in stored(page)) == ["Renamed", "second question"]
    page.set_input_files("#import", {"name": "x.json", "mimeType": "application/json", "buffer": b"[1"})
    expect(page.locator("#status")).to_contain_text("Could not import x.json")
