"""The pages in a real headless Chromium against the real gunicorn server: search by upload and by
drag and drop, verify two images, browse the gallery; sign in, add one image or a zip of 100,
edit, delete and switch gallery, each driven at laptop and phone widths; with full-page
screenshots at both (set SIAMESE_SCREENSHOTS=DIR to keep them)."""
from __future__ import annotations

import base64
import io
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support import PER_LABEL, SAMPLES, start_serve

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

    open_.expected = []  # statuses the test causes on purpose, e.g. "415"
    yield open_
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and not any(
        f"status of {status} " in e["message"] for status in open_.expected)]
    assert not problems, problems


def wait_for(browser, selector: str, timeout: float = 30, text: str = ""):
    """The elements matching `selector` (holding `text`), once there are any: a page being
    replaced meanwhile is waited out."""
    def found(d):
        try:
            return [e for e in d.find_elements(By.CSS_SELECTOR, selector) if text in e.text]
        except WebDriverException as error:
            # An element found in the old page and read once the new one is there: Chromium says
            # "stale element" or, a little later in the swap, "does not belong to the document".
            if isinstance(error, StaleElementReferenceException) or "belong to the document" in str(
                    error):
                return []
            raise
    return WebDriverWait(browser, timeout).until(found)


def shoot(browser, screenshots, name: str, only: str = "") -> None:
    """Full-page screenshots at laptop and phone widths (or `only` one); checks that neither
    scrolls sideways, that every image has loaded and that no card cuts its badges or percentages."""
    for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
        if only and label != only:
            continue
        browser.set_window_size(*size)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at {label} width"
        # Thumbnails load lazily, when scrolled to; the full-page shot shows them all.
        browser.execute_script(
            "document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        broken = browser.execute_script(
            "return [...document.images].filter(i => i.getAttribute('src') && i.complete"
            " && i.naturalWidth === 0).map(i => i.src.slice(0, 80))")
        assert not broken, broken
        cut = browser.execute_script(
            "return [...document.querySelectorAll('.card .badge, .card .probability')].filter(b => {"
            " const r = b.getBoundingClientRect(), c = b.closest('.card').getBoundingClientRect();"
            " return r.right > c.right + 0.5 || r.left < c.left - 0.5; }).map(b => b.textContent)")
        assert not cut, f"{name}: badges or percentages cut by their card at {label} width: {cut}"
        browser.execute_script("window.scrollTo(0, 0)")  # else the sticky header shows mid-page
        content = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": content["width"], "height": content["height"],
                     "scale": 1}})
        (screenshots / f"{name}-{label}.png").write_bytes(base64.b64decode(shot["data"]))
    browser.set_window_size(*(PHONE if only == "phone" else LAPTOP))


def test_search_by_upload_shows_the_results_grid(page, screenshots, sample_pngs):
    browser = page("/")
    shoot(browser, screenshots, "search-form")
    coat = SAMPLES / "Coat" / sorted(p.name for p in (SAMPLES / "Coat").glob("*.png"))[PER_LABEL]
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(coat))  # submits itself
    cards = wait_for(browser, ".matches .card")
    assert len(cards) == 8
    first = cards[0]
    assert first.find_element(By.CSS_SELECTOR, ".label").text == "Coat"
    assert first.find_element(By.CSS_SELECTOR, ".badge").text == "✓ verified"
    assert "verified" in first.get_attribute("class").split()
    distances = [float(c.find_element(By.CSS_SELECTOR, ".distance").text) for c in cards]
    assert distances == sorted(distances) and distances[0] > 0  # not in the gallery itself
    verdict = browser.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-verdict") == "verified"
    assert verdict.text.startswith("✓\nVerified match: Coat")
    query = browser.find_element(By.CSS_SELECTOR, ".query-image img")
    assert query.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_element(By.CSS_SELECTOR, ".query-image figcaption").text == coat.name
    shoot(browser, screenshots, "search-results")
    # Fewer matches: the image is kept, nothing to upload again.
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=k]")).select_by_value("4")
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".matches .card")) == 4)
    assert browser.find_element(By.CSS_SELECTOR, ".query-image figcaption").text == coat.name
    assert browser.find_element(By.CSS_SELECTOR, ".dz-text strong").text == coat.name
    # The gallery's own file: said to be that very file, not a "match".
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(sample_pngs["Coat"][0]))
    verdict = wait_for(browser, ".verdict", text="This very image")[0]
    assert "is the same file (distance 0)" in verdict.text
    assert browser.find_element(By.CSS_SELECTOR, ".matches .card .badge").text == "same file"
    shoot(browser, screenshots, "search-same-file")


def test_search_by_drag_and_drop_and_threshold(page, screenshots, sample_pngs):
    browser = page("/?k=4")
    browser.find_element(By.CSS_SELECTOR, "input[name=threshold]").send_keys("0.000001")
    bag = sample_pngs["Bag"][2]
    browser.execute_script(DROP, base64.b64encode(bag.read_bytes()).decode(), bag.name,
                           "[data-dropzone]")
    cards = wait_for(browser, ".matches .card")
    assert len(cards) == 4
    badges = [c.find_element(By.CSS_SELECTOR, ".badge").text for c in cards]
    assert badges == ["same file"] + ["✗ not verified"] * 3  # only the very image is that close
    kept = browser.find_element(By.CSS_SELECTOR, "input[name=threshold]").get_attribute("value")
    assert float(kept) == 1e-6  # the form keeps the settings for the next query
    shoot(browser, screenshots, "search-none-verified")  # the longest badges, in narrow cards


def test_verify_two_images(page, screenshots, sample_pngs):
    browser = page("/verify")
    shoot(browser, screenshots, "verify-form")
    trouser, bag = sample_pngs["Trouser"][0], sample_pngs["Bag"][0]
    browser.find_element(By.CSS_SELECTOR, "input[name=image_a]").send_keys(str(trouser))
    browser.find_element(By.CSS_SELECTOR, "input[name=image_b]").send_keys(str(bag))
    browser.find_element(By.CSS_SELECTOR, "form.verify-form button[type=submit]").click()
    verdict = wait_for(browser, ".verdict[data-verdict]")[0]
    assert verdict.get_attribute("data-verdict") == "not-verified"
    assert "Not verified: different" in verdict.text
    shoot(browser, screenshots, "verify-different")
    # Both images are kept: a stricter operating point is one click, and the second image alone
    # can be changed.
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=operating_point]")).select_by_value(
        "far-1e-3")
    verdict = wait_for(browser, ".verdict[data-verdict]", text="far-1e-3")[0]
    assert "Not verified: different" in verdict.text
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".pair .dz-text strong")]
    assert names == [trouser.name, bag.name]
    # The threshold box suggests the chosen operating point's threshold, not the default's.
    assert browser.find_element(By.CSS_SELECTOR, "input[name=threshold]").get_attribute(
        "placeholder") == "0.059"
    # On a page with a result, choosing a file runs the verification by itself: a click on
    # "Verify" as well would send it twice, and the second answer would replace the first.
    browser.find_element(By.CSS_SELECTOR, "input[name=image_b]").send_keys(str(trouser))
    verdict = wait_for(browser, ".verdict[data-verdict=verified]")[0]
    assert "Verified: the same (both are the very same file)" in verdict.text
    assert "distance 0.000" in verdict.text
    shoot(browser, screenshots, "verify-same")


def test_identify_one_to_many_names_the_item_or_nobody(page, screenshots, sample_pngs):
    """1:N in the browser, at laptop and phone width: an enrolled image is identified with the
    rule in words; a target rate is one choice away; a portrait is nobody, said plainly."""
    browser = page("/identify")
    assert "Who is this?" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.CSS_SELECTOR, "nav a[aria-current=page]").text == "Identify"
    shoot(browser, screenshots, "identify-form")
    shirt = sample_pngs["Shirt"][0]
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=fpir]")).select_by_value("0.1")
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(shirt))  # submits
    verdict = wait_for(browser, ".verdict[data-verdict=identified]")[0]
    assert "Identified: Shirt" in verdict.text and "10% of people or things not enrolled" in \
        verdict.text
    cards = browser.find_elements(By.CSS_SELECTOR, ".matches .card")
    assert len(cards) == 5 and "identified" in cards[0].text
    assert browser.find_element(By.CSS_SELECTOR, ".query img").get_attribute("src").startswith(
        "data:image/png;base64,")  # the query shown back
    shoot(browser, screenshots, "identify-found")
    portrait = Path(__file__).resolve().parents[2] / "samples" / "queries" / "portrait.png"
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(portrait))
    notice = wait_for(browser, ".verdict[data-verdict=out-of-domain]")[0]
    assert "does not look like what this model was trained on" in notice.text
    shoot(browser, screenshots, "identify-nobody")


def test_gallery_browser_labels_paging_and_search_by_item(page, screenshots):
    browser = page("/gallery")
    chips = browser.find_elements(By.CSS_SELECTOR, ".chips a")
    assert [c.text.split()[0] for c in chips][:2] == ["All", "Ankle-boot"] and len(chips) == 11
    assert len(browser.find_elements(By.CSS_SELECTOR, ".gallery .card")) == 48
    assert browser.find_element(By.CSS_SELECTOR, ".pager .where").text == "Page 1 of 2"
    shoot(browser, screenshots, "gallery")
    go(browser, ".pager a[rel=next]")
    assert browser.find_element(By.CSS_SELECTOR, ".pager .where").text == "Page 2 of 2"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".gallery .card")) == 2
    chips = browser.find_elements(By.CSS_SELECTOR, ".chips a")
    go(browser, next(c for c in chips if c.text.startswith("Sandal")))
    cards = browser.find_elements(By.CSS_SELECTOR, ".gallery .card")
    assert len(cards) == 5
    assert {c.find_element(By.CSS_SELECTOR, ".label").text for c in cards} == {"Sandal"}
    assert "label=Sandal" in browser.current_url
    item_id = cards[0].get_attribute("data-item")
    go(browser, cards[0].find_element(By.CSS_SELECTOR, "a"))
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == f"Sandal #{item_id}"
    neighbours = browser.find_elements(By.CSS_SELECTOR, ".matches .card")
    assert neighbours and item_id not in {n.get_attribute("data-item") for n in neighbours}
    assert neighbours[0].find_element(By.CSS_SELECTOR, ".label").text == "Sandal"
    shoot(browser, screenshots, "item")
    go(browser, browser.find_element(By.LINK_TEXT, "Search with this image"))
    matches = wait_for(browser, ".matches .card")
    assert matches[0].get_attribute("data-item") == item_id
    caption = browser.find_element(By.CSS_SELECTOR, ".query-image figcaption").text
    assert caption.startswith(f"Gallery item {item_id}")


def test_a_bad_upload_is_explained_next_to_the_field(page, screenshots, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    page.expected.append(415)
    browser = page("/")
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(text))
    error = wait_for(browser, ".field-error[data-field=image]")[0]
    assert error.text == ("notes.png: not an image file that can be read (PNG, JPEG, GIF, WebP, "
                          "BMP or TIFF)")
    assert "415" not in browser.page_source and "unsupported" not in browser.page_source
    shoot(browser, screenshots, "search-bad-file")


def test_an_image_over_the_limit_is_refused_before_it_is_sent(page, tmp_path, server):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(24_999_996))
    browser = page("/")
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(big))
    error = wait_for(browser, ".field-error[data-client]")[0]
    limit = browser.find_element(By.CSS_SELECTOR, "body").get_attribute("data-max-size")
    assert error.text == f"big.png is 25.0 MB: images can be at most {limit}. Choose a smaller file."
    assert browser.current_url == server.url + "/"  # nothing was sent
    assert not browser.find_elements(By.CSS_SELECTOR, ".results")


def test_a_page_that_is_not_there(page, screenshots):
    page.expected.append(404)
    browser = page("/gallery/999999")
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == "Not found"
    assert "No item 999999 in the gallery" in browser.find_element(By.CSS_SELECTOR, ".error-panel").text
    shoot(browser, screenshots, "not-found")


# --- managing galleries: two galleries, keys, adding, editing, deleting ---------------------------

@pytest.fixture(scope="module")
def shop(tmp_path_factory, template_gallery, model_dir):
    """`siamese-serve` over two galleries: shop (the default; writes need s3cret) and staff (reads
    need r3ad, writes st4ff), each a copy of the test gallery."""
    folder = tmp_path_factory.mktemp("shop")
    for name in ("shop", "staff"):
        shutil.copytree(template_gallery, folder / name)
    live = start_serve(folder / "shop", model_dir, folder / "serve.log", "--gallery",
                       f"staff={folder / 'staff'}", workers=1,
                       env={"SIAMESE_API_KEY": "s3cret", "SIAMESE_API_KEY_STAFF": "st4ff",
                            "SIAMESE_READ_KEY_STAFF": "r3ad"})
    yield live
    live.stop()


@pytest.fixture(params=["laptop", "phone"])
def manage(request, browser, shop):
    """The shop server's pages, driven at laptop or phone width, signed out to begin with."""
    size = LAPTOP if request.param == "laptop" else PHONE
    browser.get(shop.url + "/healthz")
    browser.delete_all_cookies()
    browser.get_log("browser")
    browser.set_window_size(*size)

    def open_(path: str):
        browser.get(shop.url + path)
        browser.set_window_size(*size)
        return browser

    open_.size = request.param
    yield open_
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                and not re.search(r"status of (400|401|404) ", e["message"])]  # asked for
    assert not problems, problems


def wait_url(browser, part: str, timeout: float = 30) -> None:
    """Wait for the browser to be at a URL holding `part` (a click's navigation is not waited for)."""
    WebDriverWait(browser, timeout).until(lambda d: part in d.current_url)


def fill(browser, selector: str, text: str) -> None:
    field = browser.find_element(By.CSS_SELECTOR, selector)
    field.clear()
    field.send_keys(text)


def click(browser, target) -> None:
    """Click an element, or the one a CSS selector finds."""
    element = browser.find_element(By.CSS_SELECTOR, target) if isinstance(target, str) else target
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def go(browser, target, timeout: float = 120) -> None:
    """Click something (an element or a CSS selector) that leads to another page, and wait for
    that page."""
    old = browser.find_element(By.TAG_NAME, "html")
    click(browser, target)
    WebDriverWait(browser, timeout).until(lambda _: gone(old))
    wait_for(browser, "footer", timeout)


def gone(element) -> bool:
    """Whether a page's element is gone with its page. Asked mid-navigation, chromedriver may
    answer "Node with given id does not belong to the document" instead of a stale element."""
    try:
        return staleness_of(element)(None)
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise


def sign_in(browser, key: str) -> None:
    fill(browser, "input[name=key]", key)
    go(browser, "form button[type=submit]")


def unseen_png(label: str, n: int) -> Path:
    """A sample PNG that is not in the test gallery (which holds each label's first PER_LABEL)."""
    return sorted((SAMPLES / label).glob("*.png"))[PER_LABEL + n]


def test_sign_in_add_one_image_and_find_it_with_its_metadata(manage, screenshots, shop):
    browser = manage("/gallery/add")
    assert "/signin?next=" in browser.current_url  # writes need the key
    assert "write key" in browser.find_element(By.CSS_SELECTOR, ".lead").text
    shoot(browser, screenshots, "signin", manage.size)
    sign_in(browser, "wrong")
    assert (wait_for(browser, ".field-error[data-field=key]")[0].text
            == "That key does not open gallery shop.")
    shoot(browser, screenshots, "signin-wrong", manage.size)
    sign_in(browser, "s3cret")
    wait_for(browser, "form.add-form")
    shoot(browser, screenshots, "add", manage.size)
    sneaker = unseen_png("Sneaker", 0 if manage.size == "laptop" else 1)
    browser.find_element(By.CSS_SELECTOR, "input[name=images]").send_keys(str(sneaker))
    fill(browser, "input[name=label]", "Sneaker")
    fill(browser, "textarea[name=metadata]", '{"sku": "SN-40", "shelf": "B3"}')
    go(browser, "form.add-form button[type=submit]")
    report = wait_for(browser, "#report", 60)[0]
    assert report.find_element(By.CSS_SELECTOR, "h2").text == "1 added"
    assert browser.find_element(By.CSS_SELECTOR, "input[name=label]").get_attribute("value") == ""
    row = report.find_element(By.CSS_SELECTOR, "tr[data-status=added]")
    assert row.find_element(By.CSS_SELECTOR, ".file").text == sneaker.name
    item_id = row.find_element(By.CSS_SELECTOR, "a").text.split()[-1]
    shoot(browser, screenshots, "add-one-report", manage.size)
    # A shop employee's search: the match shows what the shop needs, its SKU and shelf.
    manage("/")
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(sneaker))
    first = wait_for(browser, ".matches .card")[0]
    assert first.get_attribute("data-item") == item_id
    meta = dict(zip((e.text for e in first.find_elements(By.CSS_SELECTOR, ".meta dt")),
                    (e.text for e in first.find_elements(By.CSS_SELECTOR, ".meta dd"))))
    assert meta == {"sku": "SN-40", "shelf": "B3"}
    assert "sku: SN-40 · shelf: B3" in browser.find_element(By.CSS_SELECTOR, ".verdict").text
    shoot(browser, screenshots, "search-metadata", manage.size)
    # Signing out closes the writes again.
    go(browser, "footer button.linklike")
    assert not browser.find_elements(By.CSS_SELECTOR, "footer button.linklike")
    manage("/gallery/add")
    assert "/signin?next=" in browser.current_url


def zip_of_pngs(path: Path, count: int, first: int) -> Path:
    """`count` unseen sample PNGs in a folder per label, and what a zip should not bring in: a
    text file, a name that climbs out of the zip, a hidden macOS file and a zip inside it."""
    labels = sorted(d.name for d in SAMPLES.iterdir())
    with zipfile.ZipFile(path, "w") as archive:
        for n in range(count):
            label = labels[n % len(labels)]
            png = unseen_png(label, first + n // len(labels))
            archive.writestr(f"new/{label}/{png.name}", png.read_bytes())
        archive.writestr("new/readme.txt", "hello")
        archive.writestr("../../escaped.png", unseen_png("Bag", 50).read_bytes())
        archive.writestr("__MACOSX/new/._x.png", b"\0")
        archive.writestr("new/inner.zip", b"PK\x05\x06" + bytes(18))
    return path


# The progress box's states, kept in sessionStorage: the upload's answer replaces the page.
WATCH_PROGRESS = """
const box = document.querySelector(".upload-progress");
sessionStorage.setItem("progress", "[]");
new MutationObserver(() => {
  const log = JSON.parse(sessionStorage.getItem("progress"));
  log.push([box.hidden, box.querySelector(".upload-status").textContent]);
  sessionStorage.setItem("progress", JSON.stringify(log));
}).observe(box, {subtree: true, attributes: true, childList: true, characterData: true});
"""


def test_add_a_zip_of_100_with_progress_and_a_report_per_file(manage, screenshots, shop,
                                                              tmp_path):
    before = shop.json("GET", "/healthz")[1]["items"]
    archive = zip_of_pngs(tmp_path / f"new-{manage.size}.zip", 100,
                          first=10 if manage.size == "laptop" else 30)
    browser = manage("/signin")
    sign_in(browser, "s3cret")
    manage("/gallery/add")
    browser.find_element(By.CSS_SELECTOR, "input[name=images]").send_keys(str(archive))
    assert browser.find_element(By.CSS_SELECTOR, ".dz-text").text == archive.name
    click(browser, "input[name=folder_labels]")
    browser.execute_script(WATCH_PROGRESS)
    go(browser, "form.add-form button[type=submit]")
    report = wait_for(browser, "#report", 120)[0]
    progress = [text for hidden, text in browser.execute_script(
        "return JSON.parse(sessionStorage.getItem('progress'))") if not hidden]
    assert "Uploading… 100%" in progress and progress[-1] == "Adding to the gallery…", progress
    assert report.find_element(By.CSS_SELECTOR, "h2").text == "100 added, 4 skipped"
    rows = {r.find_element(By.CSS_SELECTOR, ".file").get_attribute("textContent"): r
            for r in report.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert sum(r.get_attribute("data-status") == "added" for r in rows.values()) == 100
    skipped = {name: r.text for name, r in rows.items() if r.get_attribute("data-status") == "skipped"}
    # What went wrong comes first, then any image added with a note (the phone's zip holds one
    # the model finds no features in); the plainly added are one click away.
    noted = [r for r in rows.values() if r.find_elements(By.CSS_SELECTOR, ".warning")]
    assert all(r.get_attribute("data-status") == "added" and "the model finds no features" in
               r.find_element(By.CSS_SELECTOR, ".warning").get_attribute("textContent")
               for r in noted)
    assert report.find_element(By.CSS_SELECTOR, "details.added summary").text == (
        f"{100 - len(noted)} images added")
    assert report.find_element(By.CSS_SELECTOR, "details.added").get_attribute("open") is None
    assert browser.execute_script("return window.scrollY") == 0
    assert set(skipped) == {f"{archive.name}: {name}" for name in (
        "new/readme.txt", "../../escaped.png", "__MACOSX/new/._x.png", "new/inner.zip")}
    assert "points outside the zip" in skipped[f"{archive.name}: ../../escaped.png"]
    shoot(browser, screenshots, "add-zip-report", manage.size)
    assert shop.json("GET", "/healthz")[1]["items"] == before + 100
    labels = shop.json("GET", "/api/gallery?label=Sandal&limit=200")[1]["items"]
    assert sum(i["source"].startswith(f"{archive.name}: new/Sandal/") for i in labels) == 10
    assert not list(shop.gallery.parent.rglob("escaped.png"))
    # The same zip again: nothing new, each file said to be there already.
    manage("/gallery/add")
    browser.find_element(By.CSS_SELECTOR, "input[name=images]").send_keys(str(archive))
    go(browser, "form.add-form button[type=submit]")
    report = wait_for(browser, "#report", 120)[0]
    assert report.find_element(By.CSS_SELECTOR, "h2").text.startswith(
        "0 added, 100 already in the gallery")
    assert shop.json("GET", "/healthz")[1]["items"] == before + 100


def test_edit_and_delete_an_item(manage, screenshots, shop, sample_pngs):
    added = shop.json("POST", "/api/gallery", headers={"X-API-Key": "s3cret"}, fields={
        "image": ("shirt.png", unseen_png("Shirt", 60 if manage.size == "laptop" else 61)
                  .read_bytes()), "label": "Shirt"})
    assert added[0] == 201, added
    item_id = added[1]["item"]["id"]
    browser = manage(f"/gallery/{item_id}")
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == f"Shirt #{item_id}"
    # Editing needs the write key, asked for before anything is typed that could be lost.
    assert not browser.find_elements(By.CSS_SELECTOR, "form.edit-form")
    shoot(browser, screenshots, "item-signed-out", manage.size)
    go(browser, ".sign-in-to-edit a")
    wait_url(browser, "/signin?next=")
    assert "write key" in browser.find_element(By.CSS_SELECTOR, ".lead").text
    sign_in(browser, "s3cret")
    wait_url(browser, f"/gallery/{item_id}")
    wait_for(browser, "form.edit-form")
    fill(browser, "input[name=label]", "Shirt (blue)")
    fill(browser, "textarea[name=metadata]", '{"sku": "SH-1", ')
    go(browser, "form.edit-form button[type=submit]")
    error = wait_for(browser, ".field-error[data-field=metadata]")[0]
    assert error.text == ('The metadata must be a JSON object, like {"sku": "A-1"}: expecting '
                          'property name enclosed in double quotes at line 1, column 16')
    assert browser.find_element(By.CSS_SELECTOR, "input[name=label]").get_attribute(
        "value") == "Shirt (blue)"  # what was typed stays
    shoot(browser, screenshots, "item-bad-metadata", manage.size)
    fill(browser, "textarea[name=metadata]", '{"sku": "SH-1", "colour": "blue"}')
    go(browser, "form.edit-form button[type=submit]")
    assert wait_for(browser, ".notice.ok")[0].text == "Saved."
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == f"Shirt (blue) #{item_id}"
    facts = browser.find_element(By.CSS_SELECTOR, ".facts").text
    assert "sku\nSH-1" in facts and "colour\nblue" in facts
    shoot(browser, screenshots, "item-saved", manage.size)
    assert shop.json("GET", f"/api/gallery/{item_id}")[1]["item"]["metadata"] == {
        "sku": "SH-1", "colour": "blue"}
    go(browser, "a.button.danger")
    wait_for(browser, "h1", text=f"Delete item {item_id}?")
    shoot(browser, screenshots, "delete-confirm", manage.size)
    go(browser, "a.button:not(.danger)[href$='/gallery/%d']" % item_id)
    assert shop.json("GET", f"/api/gallery/{item_id}")[0] == 200
    go(browser, "a.button.danger")
    wait_for(browser, "h1", text="Delete item")
    go(browser, "form button.danger")
    assert wait_for(browser, ".notice.ok")[0].text == f"Item {item_id} was deleted."
    assert browser.find_element(By.CSS_SELECTOR, ".title-row a.button").text == "+ Add images"
    shoot(browser, screenshots, "deleted", manage.size)
    assert shop.json("GET", f"/api/gallery/{item_id}")[0] == 404
    manage(f"/gallery/{item_id}")
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == "Not found"


def test_switch_gallery_with_its_own_read_key(manage, screenshots, shop, sample_pngs):
    shop_size = shop.json("GET", "/healthz")[1]["items"]
    browser = manage("/gallery")
    click(browser, ".switcher summary")
    shoot(browser, screenshots, "switcher", manage.size)
    go(browser, ".switcher a[href$='/galleries/staff/gallery']")
    wait_url(browser, "/galleries/staff/signin?next=")  # staff needs its read key
    assert "read key" in browser.find_element(By.CSS_SELECTOR, ".lead").text
    sign_in(browser, "s3cret")  # shop's write key is not staff's
    assert (wait_for(browser, ".field-error[data-field=key]")[0].text
            == "That key does not open gallery staff.")
    sign_in(browser, "r3ad")
    wait_for(browser, ".gallery .card")
    assert browser.current_url.endswith("/galleries/staff/gallery")
    assert browser.find_element(By.CSS_SELECTOR, ".switcher summary strong").text == "staff"
    assert browser.find_element(By.CSS_SELECTOR, ".lead").text.startswith("50 images.")
    # Read, not write: adding is offered as a sign-in with the write key.
    assert browser.find_element(By.CSS_SELECTOR, ".title-row a.button").text == (
        "Sign in to add images")
    shoot(browser, screenshots, "staff-gallery", manage.size)
    # Staff's search finds staff's items; nothing added to shop shows here.
    go(browser, "nav a[href$='/galleries/staff/']")
    wait_for(browser, "form.search-form")
    browser.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(
        str(sample_pngs["Dress"][0]))
    first = wait_for(browser, ".matches .card")[0]
    assert first.find_element(By.CSS_SELECTOR, ".badge").text == "same file"
    image = first.find_element(By.CSS_SELECTOR, "img").get_attribute("src")
    assert "/api/galleries/staff/gallery/" in image
    # The read key opens reading, not writing.
    manage("/galleries/staff/gallery/add")
    assert "write=1" in browser.current_url
    sign_in(browser, "r3ad")
    assert (wait_for(browser, ".field-error[data-field=key]")[0].text
            == "That is the read key: changes need the write key.")
    # And back to shop, whose count staff did not change.
    manage("/galleries/staff/")
    click(browser, ".switcher summary")
    go(browser, ".switcher a[href='/']")
    wait_url(browser, shop.url + "/")
    wait_for(browser, "form.search-form")
    assert browser.current_url == shop.url + "/"
    assert f"{shop_size:,} images" in browser.find_element(By.CSS_SELECTOR, "footer").text


def test_api_docs_page(manage, screenshots):
    browser = manage("/api/docs")
    text = browser.find_element(By.CSS_SELECTOR, "main").text
    for path in ("/api/search", "/api/verify/batch", "/api/galleries", "/api/gallery/{item_id}"):
        assert path in text
    shoot(browser, screenshots, "api-docs", manage.size)


def test_page_forms_need_their_csrf_token(app, sample_pngs):
    """A form POST must carry the token its page gave this browser's session, signed by the
    server: none, a made-up one, one of another session, or one sent from another site's page is
    refused with 403 (a client-chosen value in a cookie and a field once passed)."""
    client = app.test_client()
    page = client.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("siamese_session=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and token not in cookie  # the session holds it signed
    image = sample_pngs["Bag"][0].read_bytes()

    def post(path, fields, who=client, **headers):
        return who.post(path, headers=headers,
                        data={**fields, "image": (io.BytesIO(image), "q.png"),
                              "image_a": (io.BytesIO(image), "a.png"),
                              "image_b": (io.BytesIO(image), "b.png")})

    assert post("/", {"csrf_token": token}).status_code == 200
    assert post("/verify", {"csrf_token": token}).status_code == 200
    assert post("/", {"csrf_token": token}, Origin="http://localhost").status_code == 200
    forged = "A" * 43  # what the audit's attacker chose for both the cookie and the field
    for fields in ({}, {"csrf_token": forged}, {"csrf_token": token[:-2] + "xx"}):
        refused = post("/", fields)
        assert refused.status_code == 403 and refused.mimetype == "text/html"
        assert "reload the page" in refused.get_data(as_text=True)
        assert post("/verify", fields).status_code == 403
    # The right token, from a page of another site: refused by the Origin check.
    cross = post("/", {"csrf_token": token}, Origin="http://evil.example")
    assert cross.status_code == 403 and "other sites" in cross.get_data(as_text=True)
    stranger = app.test_client()  # another browser: its own session, a token copied from this one
    stranger.get("/")
    assert post("/", {"csrf_token": token}, who=stranger).status_code == 403
    stranger.set_cookie("siamese_csrf", forged)  # the old double-submit cookie counts for nothing
    assert post("/", {"csrf_token": forged}, who=stranger).status_code == 403
