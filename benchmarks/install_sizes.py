"""
Disk size of the core install and of each extra: a fresh venv gets torch, then `pip install .` (the core); each
extra is then installed on top of the core, measured, and its new packages uninstalled again before the next one.
Sizes are `du` of site-packages, so each extra's figure is what it adds to the core.

    python benchmarks/install_sizes.py --work /tmp/install-sizes [--constraints constraints/transformers-5.txt]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = ("train", "eval", "demo", "dev")


def site_packages_mib(env_dir: str) -> float:
    python = os.path.join(env_dir, "bin", "python")
    path = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    kib = subprocess.run(["du", "-sk", path], capture_output=True, text=True, check=True).stdout.split()[0]
    return int(kib) / 1024


def installed(pip: list) -> set:
    frozen = subprocess.run([*pip, "freeze", "--exclude-editable"], capture_output=True, text=True, check=True)
    return {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.stdout.splitlines() if line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="scratch folder (a temporary one by default)")
    parser.add_argument("--constraints", default=os.path.join(ROOT, "constraints", "transformers-5.txt"))
    parser.add_argument("--torch", default="2.13.0")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="chartwiz-install-sizes-")
    env_dir = os.path.join(work, "venv")
    shutil.rmtree(env_dir, ignore_errors=True)
    venv.create(env_dir, with_pip=True)
    pip = [os.path.join(env_dir, "bin", "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", f"torch=={args.torch}"], check=True)
    with_torch, torch_packages = site_packages_mib(env_dir), installed(pip)
    # A copy of the project: the build leaves nothing in the checkout.
    project = os.path.join(work, "project")
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv*", "outputs", "__pycache__", "runs"))
    subprocess.run([*pip, "install", project, "-c", args.constraints], check=True)
    core = site_packages_mib(env_dir)
    core_packages = installed(pip)
    rows = [
        ("torch alone", with_torch, len(torch_packages)),
        ("core (`pip install chartwiz`), over torch", core - with_torch, len(core_packages - torch_packages)),
    ]
    print(f"torch {args.torch}: {with_torch:.0f} MiB; core adds {core - with_torch:.0f} MiB", file=sys.stderr)
    for extra in EXTRAS:
        subprocess.run([*pip, "install", f"{project}[{extra}]", "-c", args.constraints], check=True)
        added = installed(pip) - core_packages
        rows.append((f"`[{extra}]`, over the core", site_packages_mib(env_dir) - core, len(added)))
        print(f"[{extra}] adds {rows[-1][1]:.0f} MiB: {', '.join(sorted(added))}", file=sys.stderr)
        if added:
            subprocess.run([*pip, "uninstall", "--yes", *sorted(added)], check=True)
    print("| install | MiB | packages added |\n| --- | ---: | ---: |")
    for name, mib, count in rows:
        print(f"| {name} | {mib:.0f} | {count} |")


if __name__ == "__main__":
    main()
