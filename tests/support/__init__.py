"""The test suite's harness, imported as ``support.<module>`` (tests/ is on pytest's path).

- ``engine_tiny``: the tiny architecture (its config, inputs, checkpoint writer) that the
  engine unit tests and the ``tiny_server`` run on.
- ``synthetic_images``: small generated images (``png``) for everything after decoding.
- ``hostile``: hostile and awkward-but-valid encoded images (``hostile.payloads``).
- ``servers``: ``running(server)``, a started server that is killed whatever happens.
- ``repositories``: copies of the committed model folder, weights in each version folder.
- ``waiting``: ``wait_for`` and ``settled``, polling instead of sleeping.
- ``prometheus``: reading a server's metrics page.
- ``hub_emulator``: a local ModelScope hub for the download tests.
- ``sharing``: which tests share a costly fixture, i.e. the pytest-xdist groups.
"""
