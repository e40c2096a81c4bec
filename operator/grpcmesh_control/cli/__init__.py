"""The ``grpcmesh`` command (``app``), on top of every other layer; nothing imports it."""
