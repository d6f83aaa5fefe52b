"""The ``shortwan`` command: generate, batch, status, wait, download, fake-server, demo.

It needs the ``cli`` extra (click and rich): ``pip install 'shortwan[cli]'``. Run it as
``shortwan`` or ``python -m shortwan``; it is a program, not an API, and nothing in the library
imports it. The test fake (:mod:`shortwan.testing`) is imported only by the ``fake-server`` and
``demo`` commands, when they run.
"""

from ._app import main

__all__ = ["main"]
