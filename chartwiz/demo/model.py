"""The demo's model, loaded once per process: by `chartwiz demo` before its server starts, or by the page itself."""

import threading
from typing import Optional

from chartwiz.inference.engines import load_model_for_inference


_LOADED: dict = {}
_LOADING = threading.Lock()


def load_demo_model(path: str, adapter: Optional[str] = None):
    """
    The model, its processor and a lock for `path` (+ `adapter`), loaded on the first call of the process and shared
    by every later one: `chartwiz demo` calls it before starting the server (so a model that cannot load stops the
    command), and the page, run by that server in the same process, finds it loaded.
    """
    with _LOADING:
        if (path, adapter) not in _LOADED:
            model, processor = load_model_for_inference(path, adapter)
            # One generation at a time: sessions run in threads and would otherwise contend for the same device.
            _LOADED[path, adapter] = (model, processor, threading.Lock())
        return _LOADED[path, adapter]


__all__ = ["load_demo_model"]
