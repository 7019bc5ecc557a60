"""The inspector, error-browser and attention widgets, exported as standalone HTML with their state (ipywidgets'
embed), open in headless Chromium and render: the expected elements and the image are on the page. The widget manager
script comes from the npm registry (installed by `make test` into .venv/npm); the page is served from loopback."""
import functools, http.server, shutil, threading
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EMBED_JS = Path(__file__).parents[1] / ".venv/npm/node_modules/@jupyter-widgets/html-manager/dist/embed.js"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic"]

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium: `make test` installs Debian's chromium as root"),
              pytest.mark.skipif(not EMBED_JS.exists(), reason="no widget manager script: `make test` installs it with npm")]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    shutil.copy(EMBED_JS, root / "embed.js")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def render(widget, name, site, browser, wait_for: str):
    from ipywidgets.embed import embed_minimal_html
    root, url = site
    embed_minimal_html(root / f"{name}.html", views=[widget], title=name, requirejs=False, embed_url="embed.js")
    page = browser.new_page(user_agent="vlmnb-test")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/{name}.html")
    page.wait_for_selector(wait_for, timeout=30000)
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30000)
    shot = root / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000 and not errors, errors
    return page


def images_loaded(page, selector) -> int:
    return page.evaluate(f"() => [...document.querySelectorAll('{selector}')].filter(i => i.naturalWidth > 0).length")


def test_sample_inspector(site, browser):
    from vlmnb.collate import VLMCollator, inspect_samples
    from vlmnb.data import colour_shapes
    from vlmnb.load import tiny_model
    _, processor = tiny_model("qwen2_vl")
    widget = inspect_samples(colour_shapes(4, seed=0), VLMCollator(processor, model_type="qwen2_vl"), max_length=30)
    page = render(widget, "inspector", site, browser, ".vlmnb-sample")
    assert page.locator(".widget-dropdown").count() == 1 and page.locator(".widget-checkbox").count() == 1
    assert page.locator(".vlmnb-token").count() > 20 and page.locator(".vlmnb-image-run summary").count() == 1
    assert "over max_length=30" in page.locator(".vlmnb-sample").inner_text()
    assert images_loaded(page, "img.vlmnb-sample-image") == 1


def test_error_browser(site, browser):
    from vlmnb.data import colour_shapes
    from vlmnb.eval import browse_errors, compare
    from vlmnb.load import tiny_model
    before, processor = tiny_model("smolvlm", seed=0)
    after, _ = tiny_model("smolvlm", seed=1)
    ds = colour_shapes(3, seed=5)
    widget = browse_errors(compare(before, after, processor, [ds[i] for i in range(3)], max_new_tokens=3), "all")
    page = render(widget, "errors", site, browser, ".vlmnb-error")
    text = page.locator(".vlmnb-error").inner_text()
    assert "reference" in text and ds[0]["answer"] in text and "before" in text and "after" in text
    assert page.locator(".widget-slider").count() == 1 and images_loaded(page, "img.vlmnb-error-image") == 1


def test_attention_widget(site, browser):
    from vlmnb.attention import inspect_attention
    from vlmnb.data import colour_shapes
    from vlmnb.load import tiny_model
    model, processor = tiny_model("llava")
    s = colour_shapes(1, seed=2)[0]
    widget = inspect_attention(model, processor, s, s["answer"])
    page = render(widget, "attention", site, browser, ".widget-image")
    assert page.locator(".widget-dropdown").count() == 3
    assert images_loaded(page, ".widget-image") == 1
    assert "of this token's attention goes to the image" in page.locator(".widget-html").first.inner_text()
