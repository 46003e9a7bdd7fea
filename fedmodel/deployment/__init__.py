"""Deployment runtime: a coordinator's SuperLink and the data sites' SuperNodes on Flower 1.41.

:mod:`fedmodel.deployment.coordinator` builds the ``flower-superlink`` command (TLS and SuperNode
authentication on by default), writes the ``flwr`` CLI's connection to it and keeps the coordinator's
registry of admitted sites (``allow_node``, ``list_nodes``, ``revoke_node``).
:mod:`fedmodel.deployment.node` checks a site's settings and builds its ``flower-supernode`` command with
the ``--node-config`` the ClientApp reads.
"""
