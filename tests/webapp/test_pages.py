"""The pages in a real headless Chromium against the real gunicorn server: search by upload and by
drag and drop, verify two images, browse the gallery; at laptop and phone widths, with
screenshots (set SIAMESE_SCREENSHOTS=DIR to keep them)."""
from __future__ import annotations

import base64
import io
import re

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow  # a real gunicorn and a headless Chromium

LAPTOP, PHONE = (1280, 900), (390, 844)

DROP = """
const [data, name, selector] = arguments;
const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: "image/png"}));
const zone = document.querySelector(selector);
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
}
"""


@pytest.fixture
def page(browser, server, screenshots):
    """Open a path of the server; check the page at the end: no console errors (CSP included),
    no sideways scrolling, every image loaded."""
    browser.set_window_size(*LAPTOP)
    browser.get_log("browser")  # drop what earlier tests left

    def open_(path: str):
        browser.get(server.url + path)
        return browser

    yield open_
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not problems, problems


def wait_for(browser, selector: str, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, selector))


def shoot(browser, screenshots, name: str) -> None:
    """Full-page screenshots at laptop and phone widths; checks that neither scrolls sideways and
    that every image has loaded."""
    for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
        browser.set_window_size(*size)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at {label} width"
        broken = browser.execute_script(
            "return [...document.images].filter(i => i.getAttribute('src') && i.complete"
            " && i.naturalWidth === 0).map(i => i.src.slice(0, 80))")
        assert not broken, broken
        content = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": content["width"], "height": content["height"],
                     "scale": 1}})
        (screenshots / f"{name}-{label}.png").write_bytes(base64.b64decode(shot["data"]))
    browser.set_window_size(*LAPTOP)


def test_search_by_upload_shows_the_results_grid(page, screenshots, sample_pngs):
    browser = page("/")
    shoot(browser, screenshots, "search-form")
    coat = sample_pngs["Coat"][0]
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(coat))  # submits itself
    cards = wait_for(browser, ".matches .card")
    assert len(cards) == 8
    first = cards[0]
    assert first.find_element(By.CSS_SELECTOR, ".label").text == "Coat"
    assert first.find_element(By.CSS_SELECTOR, ".badge").text == "✓ verified"
    assert "verified" in first.get_attribute("class").split()
    distances = [float(c.find_element(By.CSS_SELECTOR, ".distance").text) for c in cards]
    assert distances == sorted(distances) and distances[0] < 1e-3
    verdict = browser.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-verdict") == "verified"
    assert verdict.text.startswith("✓\nVerified match: Coat")
    query = browser.find_element(By.CSS_SELECTOR, ".query-image img")
    assert query.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_element(By.CSS_SELECTOR, ".query-image figcaption").text == coat.name
    shoot(browser, screenshots, "search-results")


def test_search_by_drag_and_drop_and_threshold(page, screenshots, sample_pngs):
    browser = page("/?k=4")
    browser.find_element(By.CSS_SELECTOR, "input[name=threshold]").send_keys("0.000001")
    bag = sample_pngs["Bag"][2]
    browser.execute_script(DROP, base64.b64encode(bag.read_bytes()).decode(), bag.name,
                           "[data-dropzone]")
    cards = wait_for(browser, ".matches .card")
    assert len(cards) == 4
    badges = [c.find_element(By.CSS_SELECTOR, ".badge").text for c in cards]
    assert badges == ["✓ verified"] + ["✗ not verified"] * 3  # only the very image is that close
    kept = browser.find_element(By.CSS_SELECTOR, "input[name=threshold]").get_attribute("value")
    assert float(kept) == 1e-6  # the form keeps the settings for the next query


def test_verify_two_images(page, screenshots, sample_pngs):
    browser = page("/verify")
    shoot(browser, screenshots, "verify-form")
    trouser, bag = sample_pngs["Trouser"][0], sample_pngs["Bag"][0]
    browser.find_element(By.CSS_SELECTOR, "input[name=image_a]").send_keys(str(trouser))
    browser.find_element(By.CSS_SELECTOR, "input[name=image_b]").send_keys(str(bag))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    verdict = wait_for(browser, ".verdict[data-verdict]")[0]
    assert verdict.get_attribute("data-verdict") == "not-verified"
    assert "Not verified: different" in verdict.text
    shoot(browser, screenshots, "verify-different")
    browser.get(browser.current_url)  # the form again (GET)
    browser.find_element(By.CSS_SELECTOR, "input[name=image_a]").send_keys(str(trouser))
    browser.find_element(By.CSS_SELECTOR, "input[name=image_b]").send_keys(str(trouser))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    verdict = wait_for(browser, ".verdict[data-verdict]")[0]
    assert verdict.get_attribute("data-verdict") == "verified"
    assert "Verified: the same" in verdict.text and "distance 0.000" in verdict.text
    shoot(browser, screenshots, "verify-same")


def test_gallery_browser_labels_paging_and_search_by_item(page, screenshots):
    browser = page("/gallery")
    chips = browser.find_elements(By.CSS_SELECTOR, ".chips a")
    assert [c.text.split()[0] for c in chips][:2] == ["All", "Ankle-boot"] and len(chips) == 11
    assert len(browser.find_elements(By.CSS_SELECTOR, ".gallery .card")) == 48
    assert browser.find_element(By.CSS_SELECTOR, ".pager .where").text == "Page 1 of 2"
    shoot(browser, screenshots, "gallery")
    browser.find_element(By.CSS_SELECTOR, ".pager a[rel=next]").click()
    assert browser.find_element(By.CSS_SELECTOR, ".pager .where").text == "Page 2 of 2"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".gallery .card")) == 2
    chips = browser.find_elements(By.CSS_SELECTOR, ".chips a")
    next(c for c in chips if c.text.startswith("Sandal")).click()
    cards = browser.find_elements(By.CSS_SELECTOR, ".gallery .card")
    assert len(cards) == 5
    assert {c.find_element(By.CSS_SELECTOR, ".label").text for c in cards} == {"Sandal"}
    assert "label=Sandal" in browser.current_url
    cards[0].find_element(By.CSS_SELECTOR, "a").click()
    matches = wait_for(browser, ".matches .card")
    assert matches[0].find_element(By.CSS_SELECTOR, ".label").text == "Sandal"
    caption = browser.find_element(By.CSS_SELECTOR, ".query-image figcaption").text
    assert caption.startswith("Gallery item")


def test_a_bad_upload_shows_an_error_page(page, screenshots, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    browser = page("/")
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(text))
    panel = wait_for(browser, ".error-panel")[0]
    assert "notes.png" in panel.text and "not an image file that can be read" in panel.text
    assert "415" in panel.text
    shoot(browser, screenshots, "error")
    browser.get_log("browser")  # the 415 itself is logged by Chromium as a failed resource


def test_page_forms_need_their_csrf_token(app, sample_pngs):
    """A form POST must carry the token of its page's cookie (double submit): none, another, or
    a field without the cookie (what a cross-site form could send) is refused with 403."""
    client = app.test_client()
    page = client.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    cookie = page.headers["Set-Cookie"]
    assert f"siamese_csrf={token}" in cookie and "SameSite=Strict" in cookie
    assert "HttpOnly" in cookie
    image = sample_pngs["Bag"][0].read_bytes()

    def post(path, fields):
        return client.post(path, data={**fields, "image": (io.BytesIO(image), "q.png"),
                                       "image_a": (io.BytesIO(image), "a.png"),
                                       "image_b": (io.BytesIO(image), "b.png")})

    assert post("/", {"csrf_token": token}).status_code == 200
    assert post("/verify", {"csrf_token": token}).status_code == 200
    for fields in ({}, {"csrf_token": "another-" + "y" * 40}):
        refused = post("/", fields)
        assert refused.status_code == 403 and refused.mimetype == "text/html"
        assert "reload the page" in refused.get_data(as_text=True)
        assert post("/verify", fields).status_code == 403
    stranger = app.test_client()  # another browser: no cookie, a token copied from elsewhere
    assert stranger.post("/", data={"csrf_token": token,
                                    "image": (io.BytesIO(image), "q.png")}).status_code == 403
