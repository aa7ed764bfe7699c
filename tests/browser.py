"""Headless Chromium for the page tests: the start-up every browser script shares.

Each test runs its script in a child process (``python -c CHROME + SCRIPT``); the flags keep
Chromium off the network (this machine has none) and in a fresh profile.
"""

CHROME = """
import json, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def start_chrome(profile, window_size):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--user-data-dir=" + profile, "--window-size=" + window_size):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def open_page(driver, url, seconds=20):
    driver.set_page_load_timeout(60)
    driver.get(url)
    deadline = time.time() + seconds
    while driver.execute_script("return document.readyState") != "complete" and time.time() < deadline:
        time.sleep(0.1)
"""
