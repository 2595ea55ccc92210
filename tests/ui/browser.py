"""Headless Chromium for the console's browser tests: Debian's ``chromium`` and ``chromium-driver``, installed
when absent (apt-get, as root or through password-less sudo as on CI runners; the tests are skipped with the
reason when that is impossible), driven by Selenium through that chromedriver (Selenium's own driver download is
never used: nothing is fetched at run time).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = ["chromium", "chromium-driver"]
INSTALL_LOCK = Path("/tmp/tessera-chromium-install.lock")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
]  # fmt: skip


def present() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def as_root_prefix() -> list[str] | None:
    """How to run apt-get as root: directly when root, through password-less sudo (a CI runner) otherwise."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo is not None and subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=30).returncode == 0:
        return [sudo, "-n", "--preserve-env=DEBIAN_FRONTEND"]
    return None


def ensure_chromium() -> str | None:
    """Install Debian's chromium and its driver if they are absent; the reason they cannot be, or None."""
    if present():
        return None
    as_root = as_root_prefix()
    if as_root is None:
        return "chromium and chromium-driver are not installed, and installing them needs root (apt-get install chromium chromium-driver)"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*as_root, "apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", *PACKAGES]
    with open(INSTALL_LOCK, "w") as lock:  # one installer at a time (parallel test workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if present():
            return None
        try:
            done = subprocess.run(install, env=environment, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:  # an old or empty package list: refresh it once and try again
                subprocess.run(
                    [*as_root, "apt-get", "update", "-q"], env=environment, capture_output=True, text=True, timeout=600
                )
                done = subprocess.run(install, env=environment, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not install chromium: {exc}"
        if done.returncode != 0 or not present():
            return f"could not install chromium: apt-get said {(done.stderr or done.stdout).strip()[-400:]}"
    return None


def start_chromium(profile: Path):  # noqa: ANN201 - selenium's WebDriver, imported lazily
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console's messages (CSP reports among them)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    return driver
