"""The coordinator's Flower ServerApp.

Its modules are kept in the repository's top-level ``server/`` folder; see :mod:`fedmodel.roles`.
"""

from fedmodel.roles import role_path

__path__ = role_path(__path__, "server")
