"""Runs a command and reports its wall time and the peak resident memory of its whole process tree."""

import subprocess
import threading
import time

import psutil


def run_measured(command: list[str], interval: float = 0.1, **kwargs) -> dict:
    """Wall seconds, peak RSS of the tree (sum over processes, sampled) and of the largest single process, in MiB."""
    start = time.perf_counter()
    process = subprocess.Popen(command, **kwargs)
    peaks = {"tree": 0, "single": 0}
    done = threading.Event()

    def sample():
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
                sizes = []
                for proc in processes:
                    try:
                        sizes.append(proc.memory_info().rss)
                    except psutil.Error:
                        pass
                peaks["tree"] = max(peaks["tree"], sum(sizes))
                peaks["single"] = max(peaks["single"], max(sizes, default=0))
            except psutil.Error:
                pass
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returncode = process.wait()
    done.set()
    sampler.join()
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, command)
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_tree_mib": peaks["tree"] / 2**20,
        "peak_rss_single_mib": peaks["single"] / 2**20,
    }
