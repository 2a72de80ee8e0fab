"""Zips added from the add page that try to cost more than they bring: a member that unpacks past
the image limit (honestly declared, or declared small in its headers), more entries than a zip may
hold, a zip that is not one. Each file is reported and nothing else is added; the zip flows that
work (folders as labels, non-images, names that climb out) are driven in Chromium in
test_pages.py."""
from __future__ import annotations

import html
import io
import re
import struct
import zipfile

from encoder.images import MB
from tests.support import page_form

LIMIT_MB = 1  # the app's image limit in these tests: a bomb needs only a few MB of zeros


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def declare_size(data: bytes, name: str, size: int) -> bytes:
    """The zip with `name`'s uncompressed size set to `size` in its local and central headers:
    a zip bomb that claims to be small."""
    data = bytearray(data)
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while at >= 0 and data[at + name_at:at + name_at + len(encoded)] != encoded:
            at = data.find(signature, at + 4)
        assert at >= 0, (signature, name)
        data[at + size_at:at + size_at + 4] = struct.pack("<I", size)
    return bytes(data)


def add_page(client, files: list[tuple[bytes, str]], label: str = "Bag") -> tuple[int, dict, str]:
    """POST the add form; (status, {file: (status, reason)} of the report, the report's title)."""
    response = client.post("/gallery/add", data=page_form(client, 
        {"images": [(io.BytesIO(data), name) for data, name in files], "label": label}))
    page = response.get_data(as_text=True)
    rows = re.findall(r'data-status="(\w+)">\s*<td class="file">(.*?)</td>\s*<td[^>]*>(.*?)</td>',
                      page, re.S)
    title = re.search(r"<h2>(.*?)</h2>", page, re.S)
    return (response.status_code,
            {html.unescape(name): (status, html.unescape(" ".join(reason.split())))
             for status, name, reason in rows},
            html.unescape(title.group(1)) if title else "")


def test_a_zip_bomb_is_reported_and_nothing_else_is_lost(make_app, sample_pngs):
    app = make_app(max_image_bytes=LIMIT_MB * MB)
    client = app.test_client()
    before = client.get("/healthz").get_json()["items"]
    zeros = bytes(8 * MB)  # 8 MB of zeros: 8 kB deflated
    good = sample_pngs["Bag"][0].read_bytes()
    honest = zip_bytes({"bomb.png": zeros, "bag.png": good})
    liar = declare_size(zip_bytes({"small.png": zeros}), "small.png", 1_000)
    assert len(honest) < 100_000 and len(liar) < 100_000
    status, report, title = add_page(client, [(honest, "honest.zip"), (liar, "liar.zip")])
    assert status == 200, title
    assert report["honest.zip: bomb.png"] == ("failed", f"not added: over the {LIMIT_MB} MB "
                                                        "limit once unpacked")
    assert report["honest.zip: bag.png"][0] in {"added", "present"}
    # Declared as 1,000 bytes, it is read only so far and then refused, never unpacked whole.
    assert report["liar.zip: small.png"][0] == "failed"
    assert report["liar.zip: small.png"][1] == ("not added: cannot be unpacked: the zip is damaged "
                                                 "(what it holds does not match its header)")
    items = client.get("/healthz").get_json()["items"]
    assert items == before + (report["honest.zip: bag.png"][0] == "added")


def test_a_zip_of_too_many_entries_is_cut_off_with_a_line(client, sample_pngs):
    pngs = [p.read_bytes() for p in sample_pngs["Coat"][:2]]
    many = zip_bytes({**{f"x/{n:04d}.txt": b"" for n in range(2_001)},
                      "z/coat.png": pngs[0]})
    status, report, title = add_page(client, [(many, "many.zip"), (pngs[1], "coat.png")])
    assert status == 200
    assert report["many.zip: 2 more entries"] == (
        "skipped", "skipped: a zip may hold at most 2,000 entries")
    assert report["coat.png"][0] in {"added", "present"}
    assert "z/coat.png" not in " ".join(report)  # past the cut: never looked at


def test_members_zipfile_cannot_unpack_are_reported(client, sample_pngs):
    png = sample_pngs["Dress"][0].read_bytes()
    data = bytearray(zip_bytes({"odd.png": png}))
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(signature)
        data[at + method_at:at + method_at + 2] = struct.pack("<H", 98)  # PPMd: not in zipfile
    encrypted = bytearray(zip_bytes({"locked.png": png}))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = encrypted.find(signature)
        encrypted[at + flags_at] |= 1  # the "encrypted" flag
    status, report, title = add_page(client, [(bytes(data), "odd.zip"),
                                              (bytes(encrypted), "locked.zip")])
    assert status == 200, title
    assert report["odd.zip: odd.png"] == (
        "failed", "not added: cannot be unpacked: it is compressed with a method this server "
                  "does not read (use deflate, the usual one)")
    assert report["locked.zip: locked.png"] == (
        "failed", "not added: cannot be unpacked: it is encrypted")


def test_a_file_that_only_starts_like_a_zip_is_reported(client):
    broken = zip_bytes({"a.png": b"x" * 100})[:-30]  # its directory cut short
    status, report, title = add_page(client, [(broken, "broken.zip")])
    assert status == 200
    assert report["broken.zip"][0] == "failed", report
    assert title.startswith("0 added")


def test_an_added_image_the_model_finds_no_features_in_is_shown_first_with_a_note(
        client, fashion_test, featureless):
    from PIL import Image

    def png(i: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(fashion_test.images[i].squeeze()).save(out, "PNG")
        return out.getvalue()

    files = [(png(9000 + n), f"plain-{n}.png") for n in range(11)] + [
        (png(featureless[0]), "blank.png")]
    status, rows, title = add_page(client, files)
    assert status == 200 and title == "12 added"
    state, text = rows["blank.png"]
    assert state == "added" and text.endswith(
        'Note: the model finds no features in this image, so no other image will be verified '
        'against this item.</span>')
    page = client.post("/gallery/add", data=page_form(client, {"images": [
        (io.BytesIO(png(featureless[1])), "blank-2.png")] + [
        (io.BytesIO(png(9100 + n)), f"more-{n}.png") for n in range(11)]})).get_data(as_text=True)
    # More than ten plain adds are folded away; the one with a note is in the table above them.
    assert page.index("blank-2.png") < page.index("<details class=\"added\">")
