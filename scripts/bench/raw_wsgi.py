"""Baseline for make bench: the smallest WSGI Hello World, on the same waitress settings."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Hello World"]
