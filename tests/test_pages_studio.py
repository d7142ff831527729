"""The studio (GET /studio on the synthesis service) in a real headless Chromium, with auth on.

A person's path: open an image with the file picker, paint a mask with mouse strokes on the canvas, run
two seeds, see both results, download one: the downloaded PNG equals the source outside the editable
region (models/diffusion/blend.py) of the mask the page painted, and differs inside it. A DICOM source's
results also download as DICOM (a synthetic series in its study) and SEG.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from browser import TOKEN, chrome, data_url_bytes, save_screenshot, wait_until
from conftest import png_bytes
from PIL import Image
from service_process import ServiceProcess

from models.data.images import decode_image

pytestmark = pytest.mark.timeout(600)
STEPS = 4


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_synth):
    work = tmp_path_factory.mktemp("studio")
    env = {
        "LESIONSYNTH_SYNTHESIZER": str(tiny_synth),
        "LESIONSYNTH_MODEL_STORE": str(work / "store"),
        "LESIONSYNTH_API_TOKEN": TOKEN,
    }
    with ServiceProcess("services.synthesis.service:SynthesisService", work, env) as svc:
        yield svc


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    yield driver
    driver.quit()


@pytest.fixture()
def source(tmp_path, normal_pair):
    image, _ = normal_pair
    path = tmp_path / "source.png"
    path.write_bytes(png_bytes(image))
    return image, path


def open_studio(browser, service, source_path) -> None:
    browser.get(service.url + "/studio")
    token = browser.find_element("id", "token")
    token.clear()  # the page keeps the token of an earlier visit (sessionStorage)
    token.send_keys(TOKEN)
    browser.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")
    # The service's defaults arrive with /info; the tests fill the form after that.
    wait_until(
        lambda: browser.find_element("id", "model").text.startswith("model "), what="/info", driver=browser
    )
    browser.find_element("id", "file").send_keys(str(source_path))
    wait_until(
        lambda: "image " in browser.find_element("id", "status").text, what="the image", driver=browser
    )


def page_mask(browser) -> np.ndarray:
    url = browser.execute_script("return state.mask.toDataURL('image/png')")
    return decode_image(data_url_bytes(url))[..., 0] > 127


def test_the_page_is_served_offline_and_the_api_needs_the_token(service):
    page = httpx.get(service.url + "/studio")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = httpx.get(service.url + "/static/studio.js")
    assert script.status_code == 200 and "/synthesize_batch" in script.text
    assert httpx.post(service.url + "/info", json={}).status_code == 401


def test_paint_synthesize_download(service, browser, source, inpainter):
    from selenium.webdriver.common.action_chains import ActionChains

    image, path = source
    open_studio(browser, service, path)
    wait_until(lambda: browser.find_element("id", "model").text, what="/info with the token", driver=browser)
    # A stroke across the middle of the canvas (offsets from its centre, in CSS pixels: 240 px wide).
    browser.execute_script(
        "const b = document.getElementById('brush'); b.value = 6; b.dispatchEvent(new Event('input'))"
    )
    overlay = browser.find_element("id", "overlay")
    chain = ActionChains(browser)
    chain.move_to_element_with_offset(overlay, -30, -8).click_and_hold()
    chain.move_by_offset(22, 8).move_by_offset(22, 8).release().perform()
    mask = page_mask(browser)
    assert 0 < mask.sum() < mask.size / 4, "the stroke painted a part of the mask"
    # Erase a little: the erase tool takes pixels out again.
    browser.find_element("id", "tool-erase").click()
    ActionChains(browser).move_to_element_with_offset(overlay, -30, -8).click().perform()
    erased = page_mask(browser)
    assert erased.sum() < mask.sum()
    mask = erased

    for field, value in (("steps", STEPS), ("count", 2), ("seed", 7)):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(str(value))
    browser.find_element("id", "run").click()
    wait_until(
        lambda: len(browser.find_elements("css selector", "#results .result img")) == 2,
        what="two results",
        driver=browser,
    )
    links = browser.find_elements("css selector", "#results a.download")
    assert [a.get_attribute("data-seed") for a in links] == ["7", "8"]
    assert links[0].get_attribute("download") == "synthetic_seed7.png"
    png = data_url_bytes(links[0].get_attribute("href"))
    result = decode_image(png)
    assert result.shape == image.shape
    outside = ~inpainter.editable_region(mask)
    assert np.array_equal(result[outside], image[outside]), "pixels outside the editable region changed"
    assert not np.array_equal(result[mask], image[mask]), "nothing was painted into the mask"
    text = Image.open(io.BytesIO(png)).text
    if "lesionsynth:synthetic" in text:  # provenance chunks (issue 13 part 3) travel with the download
        assert text["lesionsynth:synthetic"] == "true" and text["lesionsynth:seed"] == "7"
    save_screenshot(browser, "studio")


def test_proposal_button(service, browser, source):
    if "/propose_mask" not in httpx.get(service.url + "/docs.json", headers=auth()).json()["paths"]:
        pytest.skip("this synthesis service has no /propose_mask yet (issue 13 part 1)")
    _, path = source
    open_studio(browser, service, path)
    browser.find_element("id", "propose").click()
    wait_until(lambda: "proposed mask" in browser.find_element("id", "status").text, driver=browser)
    assert page_mask(browser).any()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_a_dicom_image_opens_through_preview(service, browser, tmp_path, normal_pair):
    """The browser cannot decode DICOM: the page shows the service's decoding (/preview) and sends the
    DICOM bytes themselves to the synthesis; each result downloads as PNG and as DICOM (+ SEG)."""
    import pydicom
    from dicom_samples import dataset, to_bytes
    from selenium.webdriver.common.action_chains import ActionChains

    image, _ = normal_pair
    source = dataset(image)
    path = tmp_path / "source.dcm"
    path.write_bytes(to_bytes(source))
    open_studio(browser, service, path)
    shown = browser.execute_script("return document.getElementById('source').toDataURL('image/png')")
    assert np.array_equal(decode_image(data_url_bytes(shown)), image)
    ActionChains(browser).move_to_element(browser.find_element("id", "overlay")).click().perform()
    for field, value in (("steps", STEPS), ("count", 1), ("seed", 3)):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(str(value))
    browser.find_element("id", "run").click()
    wait_until(lambda: browser.find_elements("css selector", "#results a.download"), driver=browser)
    result = decode_image(
        data_url_bytes(browser.find_element("css selector", "#results a.download").get_attribute("href"))
    )
    assert result.shape == image.shape

    # A DICOM source: the result downloads as DICOM too (/synthesize_dicom, same seed and settings: the
    # same pixels), a new series in the source's study marked SYNTHETIC, and its mask as a SEG.
    link = browser.find_element("css selector", "#results a.download-dicom")
    assert link.get_attribute("download") == "synthetic_seed3.dcm" and link.text == "download DICOM"
    link.click()
    wait_until(lambda: link.get_attribute("data-ready"), what="the DICOM download", driver=browser)
    made_bytes = dicom_url_bytes(link.get_attribute("href"))
    made = pydicom.dcmread(io.BytesIO(made_bytes))
    assert "SYNTHETIC" in made.SeriesDescription and "seed 3" in made.DerivationDescription
    assert made.StudyInstanceUID == source.StudyInstanceUID
    assert made.SeriesInstanceUID != source.SeriesInstanceUID
    assert np.array_equal(decode_image(made_bytes), result), "the DICOM's pixels are the PNG's"
    seg = browser.find_element("css selector", "#results a.download-seg")
    assert seg.get_attribute("download") == "synthetic_seed3.seg.dcm"
    seg_ds = pydicom.dcmread(io.BytesIO(dicom_url_bytes(seg.get_attribute("href"))))
    assert seg_ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg_ds.StudyInstanceUID == made.StudyInstanceUID


def dicom_url_bytes(url: str) -> bytes:
    import base64

    assert url.startswith("data:application/dicom;base64,"), url[:40]
    return base64.b64decode(url.split(",", 1)[1])


def test_drag_and_drop_opens_an_image(service, browser, source):
    import base64

    image, path = source
    open_studio(browser, service, path)  # the token; then a different image is dropped
    dropped = np.ascontiguousarray(image[:40, :36])
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
        """,
        base64.b64encode(png_bytes(dropped)).decode(),
    )
    wait_until(lambda: "image 36 x 40" in browser.find_element("id", "status").text, driver=browser)
