"""The test suite.

This file makes ``tests`` a package so that pytest (import mode "prepend")
puts the repository root, not ``tests/``, on ``sys.path`` when it imports
``tests/conftest.py``. With ``tests/`` on the path, the folders
``tests/sip``, ``tests/pidf`` and ``tests/adapter`` would shadow the real
``sip``, ``pidf`` and ``adapter`` packages as namespace packages.
Test support modules are imported as ``tests.rawsip``,
``tests.presence_server``.
"""
