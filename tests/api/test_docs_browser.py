"""/docs in a real headless Chromium: the page renders every operation of /openapi.json from the
package's own file (no network), and its forms send requests: a chat completion, a streamed
response, a GET with a path parameter. Skipped when no Chromium is installed (CI installs
Debian's: see the Makefile's browser target)."""

from __future__ import annotations

import json

import pytest

from browser import Browser, find_chromium

pytestmark = pytest.mark.browser

CHROMIUM = find_chromium()


@pytest.fixture(scope="module")
def page(tiny_server):
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    browser = Browser(CHROMIUM)
    try:
        browser.open(tiny_server.url + "/docs")
        assert browser.wait_for("document.body.dataset.ready") == "true"
        yield browser
    finally:
        browser.close()


def send_from(page: Browser, section_id: str, body: dict | None = None, **params) -> str:
    """Fill the section's form, press Send, and wait for the request to finish."""
    section = f"document.getElementById({json.dumps(section_id)})"
    if body is not None:
        page.evaluate(f"{section}.querySelector('textarea').value = {json.dumps(json.dumps(body))}")
    for name, value in params.items():
        page.evaluate(f"{section}.querySelector('input[name={name}]').value = {json.dumps(value)}")
    page.evaluate(f"{section}.dataset.state = ''")
    page.evaluate(f"{section}.querySelector('button.send').click()")
    page.wait_for(f"{section}.dataset.state === 'done'")
    return (
        page.evaluate(f"{section}.querySelector('.status').textContent")
        + "\n"
        + page.evaluate(f"{section}.querySelector('pre.result').textContent")
    )


def test_every_operation_is_rendered(page, tiny_server):
    from helpers import get_json

    _, spec = get_json(tiny_server.url + "/openapi.json")
    expected = sum(len(methods) for methods in spec["paths"].values())
    assert page.evaluate("document.querySelectorAll('section.op').length") == expected
    assert page.evaluate("document.querySelectorAll('nav a').length") == expected
    assert page.evaluate("document.getElementById('error').hidden")
    # The chat section lists its fields and offers the example body.
    fields = page.evaluate(
        "[...document.querySelectorAll('#op-post-v1-chat-completions td.name code')]"
        ".map(c => c.textContent)"
    )
    assert "messages" in fields and "temperature" in fields
    example = page.evaluate(
        "JSON.parse(document.querySelector('#op-post-v1-chat-completions textarea').value)"
    )
    assert example["messages"][0]["role"] == "user"


def test_try_a_chat_completion(page):
    out = send_from(page, "op-post-v1-chat-completions")  # the example body as it stands
    status, body = out.split("\n", 1)
    assert status.startswith("200 ") and json.loads(body)["object"] == "chat.completion"


def test_try_a_streamed_response_then_fetch_it(page):
    out = send_from(
        page,
        "op-post-v1-responses",
        {"input": "Hello", "max_output_tokens": 8, "stream": True},
    )
    assert out.startswith("200 ") and "event: response.created" in out
    last = [line for line in out.splitlines() if line.startswith("data: ")][-1]
    response = json.loads(last[len("data: ") :])["response"]
    assert response["status"] in ("completed", "incomplete")
    out = send_from(page, "op-get-v1-responses-id", id=response["id"])
    status, body = out.split("\n", 1)
    assert status.startswith("200 ") and json.loads(body)["id"] == response["id"]


def test_errors_show_as_the_server_sent_them(page):
    out = send_from(page, "op-post-v1-responses", {"input": "Hi", "temperature": 5})
    status, body = out.split("\n", 1)
    assert status.startswith("400 ") and json.loads(body)["error"]["param"] == "temperature"
