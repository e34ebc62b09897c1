"""A fedspear client people can use: serve answers, take feedback, keep traces on the device, learn from them.

- :mod:`fedspear.serve.store`: the local trace store (SQLite, WAL); every interaction is committed before the
  page is answered, and nothing in it ever leaves the device.
- :mod:`fedspear.serve.adapters`: numbered adapter versions in the client's state folder; the running app picks
  up a newly published version without a restart.
- :mod:`fedspear.serve.streaming`: one answer at a time, streamed token by token, keeping the sampled ids.
- :mod:`fedspear.serve.learning`: SPEAR's client update trained from the store
  (:func:`~fedspear.serve.learning.update_from_store`), and ``fedspear train-local``.
- :mod:`fedspear.serve.app`: the FastAPI app and page (``fedspear serve``).
- :mod:`fedspear.serve.simulate`: a scripted person (the task's oracle behind the HTTP API) and an offline
  federation of served clients.

Modules that import FastAPI are only imported by ``fedspear serve``; install them with ``pip install -e '.[serve]'``.
"""
