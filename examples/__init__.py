"""Short runnable programs: the library as its users meet it.

- ``users_api.py``: a custom LiveEngage REST endpoint (the Users API) wrapped in a small typed
  client, with the engine's policies (``python -m examples.users_api``).
- ``agent_bot.py``: an agent bot on the UMS socket that subscribes, answers messages and
  re-subscribes after every reconnect (``python -m examples.agent_bot``).
- ``sdk_suite/``: another package's test suite using the le_transport pytest plugin with
  injected faults (``cd examples/sdk_suite && pytest``).

Each runs against the built-in simulator; ``tests/test_examples.py`` runs them all.
"""
