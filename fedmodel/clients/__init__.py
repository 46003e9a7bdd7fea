"""The data owner's Flower ClientApp.

Its modules are kept in the repository's top-level ``clients/`` folder; see :mod:`fedmodel.roles`.
"""

from fedmodel.roles import role_path

__path__ = role_path(__path__, "clients")
