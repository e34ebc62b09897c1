"""fedspear on Flower: a ServerApp and a ClientApp that run the same library code as ``fedspear run``.

- :mod:`fedspear.flower.server_app` (``app``): the ServerApp; a :class:`~fedspear.federation.server.FederatedServer`
  whose clients are SuperNodes reached through Flower's Grid.
- :mod:`fedspear.flower.client_app` (``app``): the ClientApp; answers ``query`` (which client am I) and ``train``
  (:func:`~fedspear.federation.client.client_update` from the received global adapter).
- :mod:`fedspear.flower.served_client_app` (``app``): the ClientApp of a device people use; trains from the trace
  store of its ``fedspear serve`` page (``fedspear flower-config --clients served``).
- :mod:`fedspear.flower.wire`: what crosses the network and the guard that lets only adapter tensors and
  scalar metrics leave a client.
- :mod:`fedspear.flower.app_config`: the run settings a ServerApp reads and the Flower app folder that
  ``fedspear flower-config`` writes (no Flower import, so the CLI works without Flower installed).

Only the modules in this package import ``flwr`` (install it with ``pip install -e '.[flower]'``); the rest of
fedspear never does.
"""
