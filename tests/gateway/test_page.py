"""The demo page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, `make browser`)
against a live gateway over a real Triton and index service.

The gateway serves from this test's event loop, so every browser step runs in a worker thread
(``asyncio.to_thread``) while the loop answers the page's requests. Screenshots land in the test's tmp
directory; ``VITRINE_PAGE_SCREENSHOT=<path>`` also copies the re-ranked search's picture there.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.fixtures.stack import GatewayHandle, gateway_config_for, start_gateway, stop_gateway
from vitrine.gateway.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.slow

CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
WAIT_S = 60.0


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = _find(("/usr/bin/chromium", "chromium"))
    chromedriver = _find(("/usr/bin/chromedriver", "chromedriver"))
    if chromium is None or chromedriver is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (`make browser` installs them; "
            f"found chromium={chromium}, chromedriver={chromedriver})"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    browser.set_page_load_timeout(WAIT_S)
    try:
        yield browser
    finally:
        browser.quit()


@dataclass
class Site:
    handle: GatewayHandle
    url: str
    catalog_dir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def site(gateway_triton: object, index_server: object, small_catalog: Path) -> AsyncIterator[Site]:
    config = gateway_config_for(
        gateway_triton.grpc_url,  # type: ignore[attr-defined]
        index_server.address,  # type: ignore[attr-defined]
        http_port=0,
        image_roots=(str(small_catalog.parent),),
    )
    handle = await start_gateway(config, small_catalog)
    yield Site(handle, f"http://127.0.0.1:{handle.gateway.http_port}", small_catalog.parent)
    await stop_gateway(handle)


# ---- browser steps (run in a worker thread) ------------------------------------------------------------


def _wait(browser: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(condition, message=f"waiting for {what}")


def _open(browser: Any, url: str) -> None:
    browser.get(url + "/")
    _wait(browser, lambda b: b.execute_script("return document.readyState") == "complete", "the page")


def _done(browser: Any) -> int:
    return int(browser.execute_script("return Number(document.getElementById('main').dataset.done)"))


def _submit(browser: Any) -> None:
    """Runs the search and waits until the page has shown its answer (results or an error)."""
    from selenium.webdriver.common.by import By

    before = _done(browser)
    browser.find_element(By.ID, "go").click()
    _wait(browser, lambda b: _done(b) > before, "the search to finish")


def _set(browser: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, element_id)
    field.clear()
    if value:
        field.send_keys(value)


def _cards(browser: Any, list_id: str = "results") -> list[dict[str, str]]:
    return list(
        browser.execute_script(
            "return [...document.querySelectorAll(`#${arguments[0]} li.card`)].map(li => ({...li.dataset}))",
            list_id,
        )
    )


def _images_loaded(browser: Any, list_id: str = "results") -> int:
    """Waits until every result image has loaded and has pixels; returns how many there are."""
    script = (
        "const imgs = [...document.querySelectorAll(`#${arguments[0]} li.card img`)];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;"
    )
    return int(_wait(browser, lambda b: b.execute_script(script, list_id), "result images to load"))


def _error_text(browser: Any) -> str:
    return str(
        browser.execute_script(
            "const e = document.getElementById('error'); return e.hidden ? '' : e.textContent;"
        )
    )


def _no_address(message: str) -> str:
    """Pillow names an unreadable buffer by its address, which differs between two calls."""
    return re.sub(r" at 0x[0-9a-f]+", "", message)


def _screenshot(browser: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    wanted = os.environ.get("VITRINE_PAGE_SCREENSHOT")
    if wanted:
        Path(wanted).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, wanted)


# ---- tests ---------------------------------------------------------------------------------------------


async def test_text_search_shows_images_and_a_filter_narrows(driver: Any, site: Site, tmp_path: Path) -> None:
    products = site.handle.products
    category = products["p000003"].category[-1]
    expected_in_category = sum(1 for p in products.values() if category in p.category)

    def steps() -> None:
        _open(driver, site.url)
        assert driver.title.startswith("Vitrine")
        # Nothing came from anywhere but the gateway (no CDN, no fonts).
        foreign = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => !n.startsWith(location.origin) && !n.startsWith('blob:'))"
        )
        assert foreign == []
        # The served cross-encoder is untrained (test export: random weights), so the re-rank switch
        # starts off and the page says why, as the gateway's /v1/serving advises.
        _wait(driver, lambda b: b.find_element("id", "rerank").get_attribute("data-advised"), "advice")
        assert not driver.find_element("id", "rerank").is_selected()
        assert "untrained" in driver.find_element("id", "rerank-note").text
        # The header says how many products the catalog holds (it says "indexing" while that grows).
        count = f"{len(products)} products"
        _wait(driver, lambda b: b.find_element("id", "catalog-size").text == count, "catalog size")

        _set(driver, "q", "boots")
        _submit(driver)
        assert _error_text(driver) == ""
        assert _images_loaded(driver) == 24
        everything = _cards(driver)
        assert len(everything) == 24
        status = driver.find_element("id", "status").text
        assert "24 results" in status and "retrieve" in status and "ms" in status

        _set(driver, "category", category)
        _submit(driver)
        narrowed = _cards(driver)
        assert 0 < len(narrowed) == min(expected_in_category, 24) < len(everything)
        assert all(category in card["category"].split(" > ") for card in narrowed)
        _images_loaded(driver)

        # Clicking a product shows its neighbours by photo and by title.
        first = narrowed[0]["id"]
        driver.find_element("css selector", f'#results li.card[data-id="{first}"]').click()
        _wait(
            driver,
            lambda b: b.execute_script("return document.getElementById('similar').dataset.done"),
            "similar",
        )
        by_image = _cards(driver, "similar-image")
        assert by_image and first not in {c["id"] for c in by_image}
        _images_loaded(driver, "similar-image")
        _screenshot(driver, tmp_path / "page-text-search.png")

    await asyncio.to_thread(steps)


async def test_upload_and_drop_searches(driver: Any, site: Site) -> None:
    pid = "p000005"
    photo = site.catalog_dir / site.handle.products[pid].image_uri
    hybrid = await site.handle.stub.Search(
        pb.SearchRequest(text="canvas sneakers", image=photo.read_bytes(), image_weight=0.9, top_k=24),
        timeout=30,
    )

    def steps() -> None:
        _open(driver, site.url)
        driver.find_element("id", "photo").send_keys(str(photo))
        _set(driver, "q", "")
        _submit(driver)
        assert _error_text(driver) == ""
        assert _cards(driver)[0]["id"] == pid  # a product's own photo finds it first
        _images_loaded(driver)

        # Drag and drop: a photo dropped on the page, plus text, is a hybrid search.
        driver.find_element("id", "photo-clear").click()
        dropped = driver.execute_async_script(
            """
            const [url, done] = arguments;
            fetch(url).then(r => r.blob()).then(blob => {
              const dt = new DataTransfer();
              dt.items.add(new File([blob], "dropped.jpg", {type: "image/jpeg"}));
              const drop = new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true});
              document.body.dispatchEvent(drop);
              done(document.getElementById("photo-name").textContent);
            });
            """,
            f"/v1/products/{pid}/image",
        )
        assert dropped == "dropped.jpg"
        driver.execute_script(
            "const w = document.getElementById('weight');"
            "w.value = '0.9'; w.dispatchEvent(new Event('input'));"
        )
        assert driver.find_element("id", "weight-out").text == "0.90"
        _set(driver, "q", "canvas sneakers")
        _submit(driver)
        assert _error_text(driver) == ""
        assert [c["id"] for c in _cards(driver)] == [h.product.id for h in hybrid.hits]
        _images_loaded(driver)

    await asyncio.to_thread(steps)


async def test_corrupt_upload_shows_an_error_and_the_page_keeps_working(
    driver: Any, site: Site, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await site.handle.stub.Search(pb.SearchRequest(image=corrupt.read_bytes()), timeout=30)
    expected = f"{refused.value.details()} (INVALID_ARGUMENT, HTTP 400)"

    def steps() -> None:
        _open(driver, site.url)
        driver.find_element("id", "photo").send_keys(str(corrupt))
        _submit(driver)
        assert _no_address(_error_text(driver)) == _no_address(expected)  # the gateway's words, shown
        assert _cards(driver) == []

        driver.find_element("id", "photo-clear").click()
        _set(driver, "q", "leather boots")
        driver.find_element("id", "rerank").click()
        _submit(driver)
        assert _error_text(driver) == ""
        assert _images_loaded(driver) == 24
        assert "re-ranked" in driver.find_element("id", "status").text
        assert "rerank" in driver.find_element("css selector", "#results .scores").text
        _screenshot(driver, tmp_path / "page.png")

    await asyncio.to_thread(steps)
