"""demo.py: the Gradio page in a real headless Chromium, and its /predict endpoint through gradio_client."""
import importlib.util
import os
import shutil
import socket

import pytest
import torch
from PIL import Image

from engine.builtin_sets import load_digits
from engine.checkpoint import data_of, load_checkpoint, model_from_checkpoint
from engine.loaders import Batching, Loader
from tools import demo

# found, not imported: importing gradio takes seconds, which each test process would pay while collecting
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                reason="gradio is absent; pip install -r requirements-extras.txt")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """The demo of the tiny run on a free local port; a digit PNG and the class PyTorch predicts for it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    images, _ = load_digits("test")
    png = tmp_path_factory.mktemp("demo") / "digit.png"
    Image.fromarray(images[0, 0].numpy()).resize((64, 64), Image.NEAREST).save(png)
    ckpt = load_checkpoint(tiny_run.run_dir / "best.pt")  # expected: the Loader and model, not the page's code
    cpu = torch.device("cpu")
    loader = Loader(images[:1], torch.zeros(1, dtype=torch.int64), Batching(1), data_of(ckpt), cpu)
    with torch.inference_mode():
        logits = model_from_checkpoint(ckpt, cpu).eval()(next(iter(loader))[0])
    expected = data_of(ckpt).class_names[int(logits.argmax())]
    page = demo.build_page(demo.load_demo(tiny_run.run_dir / "best.pt", cpu, max_pixels=25_000_000))
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", png, expected
    page.close()


def test_predict_endpoint_and_bad_uploads(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, png, expected = server
    client = Client(url, verbose=False)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="notes.png is not a readable image"):
        client.predict(handle_file(str(text)), api_name="/predict")
    huge = tmp_path / "huge.png"
    Image.new("L", (6000, 5000)).save(huge)  # 30 megapixels, a 30 kB file
    with pytest.raises(AppError, match="6000x5000 pixels, over the limit"):
        client.predict(handle_file(str(huge)), api_name="/predict")
    scores, cam, maps, verdict = client.predict(handle_file(str(png)), api_name="/predict")  # still serving
    assert scores["label"] == expected and verdict.startswith(f"prediction: {expected} (")
    confidences = [c["confidence"] for c in scores["confidences"]]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1 + 1e-6
    assert Image.open(cam).size == (8 * 28, 8 * 28) and Image.open(maps).size[0] > 200


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run does it as root)")
def test_page_in_a_real_browser(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is absent; pip install -r "
                                    "requirements-extras.txt")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, png, expected = server
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0].send_keys(str(png))
        wait.until(lambda b: f"prediction: {expected} (" in b.find_element(By.ID, "verdict").text)
        assert "trained on digits" in browser.find_element(By.TAG_NAME, "body").text
        browser.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        browser.quit()
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
