"""A live `apr serve` over an engine, on a free local port, for the server tests."""

from __future__ import annotations

import threading


def serve(engine, context: int = 128, **cfg):
    """Start serving `engine` (model name "tiny"; other ServeConfig fields in `cfg`) in a
    daemon thread; returns (url, stop, worker): call stop() to shut it down."""
    from apr.serve import ServeConfig, start_server

    httpd, worker = start_server(engine, ServeConfig(port=0, model_name="tiny", context=context, **cfg))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"

    def stop():
        httpd.shutdown()
        httpd.server_close()
        worker.close()

    return url, stop, worker
