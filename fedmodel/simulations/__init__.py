"""Local multi-owner simulations on Flower's simulation engine (Ray).

Its modules are kept in the repository's top-level ``simulations/`` folder; see :mod:`fedmodel.roles`.
"""

from fedmodel.roles import role_path

__path__ = role_path(__path__, "simulations")
