"""The review page (GET /review on the training service) in a real headless Chromium, with auth on.

A tiny balanced folder (models.balance on the tiny synthesizer) inside the output root: the page lists its
synthetic images beside their sources, one is accepted by click and one rejected by keyboard, and the
folder's manifest.csv says so. A job submitted meanwhile shows up in the jobs panel. The API serves only
files the manifest's synthetic rows list.
"""

from __future__ import annotations

import csv
import shutil

import httpx
import pytest
from browser import TOKEN, chrome, save_screenshot, wait_until
from service_process import ServiceProcess

pytestmark = pytest.mark.timeout(600)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, demo_manifest, tiny_synth):
    from models.balance import BalanceSettings, balance_dataset

    work = tmp_path_factory.mktemp("review")
    data = work / "data"
    shutil.copytree(demo_manifest.parent, data)
    balanced = work / "out" / "balanced"
    balance_dataset(
        BalanceSettings(
            manifest=data / "manifest.csv",
            model=tiny_synth,
            normal_label="normal",
            lesion_label="lesion",
            count=3,
            out=balanced,
            steps=4,
            batch_size=3,
            progress=False,
        )
    )
    return {"work": work, "data": data, "out": work / "out", "balanced": balanced}


@pytest.fixture(scope="module")
def service(dirs):
    env = {
        "LESIONSYNTH_DATA_ROOTS": str(dirs["data"]),
        "LESIONSYNTH_OUTPUT_ROOT": str(dirs["out"]),
        "LESIONSYNTH_JOBS_DIR": str(dirs["work"] / "jobs"),
        "LESIONSYNTH_MODEL_STORE": str(dirs["work"] / "store"),
        "LESIONSYNTH_API_TOKEN": TOKEN,
    }
    with ServiceProcess("services.training.service:TrainingService", dirs["work"], env) as svc:
        yield svc


def reviews(dirs) -> dict[str, str]:
    with (dirs["balanced"] / "manifest.csv").open(newline="") as f:
        return {r["image_path"]: r.get("review", "") for r in csv.DictReader(f) if r["synthetic"] == "1"}


def test_the_api_serves_only_listed_files_and_needs_the_token(service, dirs):
    url = service.url
    assert httpx.get(url + "/review").status_code == 200  # the page is public, its API is not
    assert httpx.post(url + "/review_items", json={"dataset": "balanced"}).status_code == 401
    items = httpx.post(url + "/review_items", json={"dataset": str(dirs["balanced"])}, headers=AUTH).json()
    assert items["counts"] == {"total": 3, "accepted": 0, "rejected": 0, "unreviewed": 3}
    first = items["items"][0]
    for name in (first["image_path"], first["source_image"], first["mask_path"]):
        r = httpx.post(
            url + "/review_image", json={"dataset": str(dirs["balanced"]), "path": name}, headers=AUTH
        )
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), name
    for name in ("manifest.csv", "../data/manifest.csv", "/etc/passwd"):
        r = httpx.post(
            url + "/review_image", json={"dataset": str(dirs["balanced"]), "path": name}, headers=AUTH
        )
        assert r.status_code == 404, name
    # a dataset outside the data roots and the output root is refused
    r = httpx.post(url + "/review_items", json={"dataset": "/etc"}, headers=AUTH)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    r = httpx.post(
        url + "/set_review",
        json={"dataset": str(dirs["balanced"]), "image_path": first["image_path"], "decision": "maybe"},
        headers=AUTH,
    )
    assert r.status_code == 400


def test_accept_by_click_reject_by_keyboard(service, dirs):
    from selenium.webdriver.common.keys import Keys

    job = httpx.post(
        service.url + "/submit_job",
        json={
            "type": "train-classifier",
            # fails fast in its process (no synthetic rows in the unbalanced manifest): a job to list
            "params": {
                "manifest": str(dirs["data"] / "manifest.csv"),
                "positive_label": "lesion",
                "balance": "synthetic",
            },
        },
        headers=AUTH,
    )
    assert job.status_code == 200, job.text
    driver = chrome()
    try:
        driver.get(service.url + "/review?dataset=balanced")  # relative to the first data root: absent
        token = driver.find_element("id", "token")
        token.clear()
        token.send_keys(TOKEN)
        driver.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")
        dataset = driver.find_element("id", "dataset")
        dataset.clear()
        dataset.send_keys(str(dirs["balanced"]), Keys.ENTER)
        items = wait_until(
            lambda: driver.find_elements("css selector", "#items .item"), what="the items", driver=driver
        )
        assert len(items) == 3
        wait_until(
            lambda: all(
                (img.get_attribute("src") or "").startswith("blob:")
                for img in driver.find_elements("css selector", "#items img")
            ),
            what="every image (fetched with the token)",
            driver=driver,
        )
        names = [i.get_attribute("data-image-path") for i in items]
        # Click: accept the second image.
        items[1].find_element("css selector", "button.accept").click()
        wait_until(lambda: reviews(dirs)[names[1]] == "accepted", what="the accept saved", driver=driver)
        # Keyboard: up moves to the first image, r rejects it (and moves on).
        body = driver.find_element("tag name", "body")
        body.send_keys(Keys.ARROW_UP)
        assert "current" in items[0].get_attribute("class")
        body.send_keys("r")
        wait_until(lambda: reviews(dirs)[names[0]] == "rejected", what="the reject saved", driver=driver)
        assert reviews(dirs) == {names[0]: "rejected", names[1]: "accepted", names[2]: ""}
        wait_until(
            lambda: "1 accepted, 1 rejected, 1 unreviewed" in driver.find_element("id", "counts").text,
            driver=driver,
        )
        # the jobs panel lists jobs with their state (polled every 2 s)
        wait_until(lambda: job.json()["id"][:8] in driver.find_element("id", "jobs").text, driver=driver)
        save_screenshot(driver, "review")
    finally:
        driver.quit()
