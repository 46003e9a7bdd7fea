"""Names both Flower apps agree on in their messages (no Flower import here)."""

OWNER_RECORD_KEY = "owner-info"
"""ConfigRecord of a deployed owner's reply holding its ``name`` (a simulated owner sends ``owner`` as a metric)."""

PLACEMENT_RECORD_KEY = "placement"
"""ConfigRecord of a reply saying where the ClientApp ran: ``{"ray-node": ID}`` inside a Ray worker."""

QUALITY_RECORD_KEY = "quality"
"""ConfigRecord of a train reply with the owner's data counts (rows, gaps, duplicates, ... never a value)."""

FEATURE_SUMS_QUERY = "feature-sums"
"""The ``query`` a ServerApp sends before round 1 for federated scaling statistics (DP sums)."""

PRIVACY_REPLY_KEY = "privacy-state"
"""ConfigRecord of a train reply: the owner's privacy state after the round, which checkpoints keep."""

HANDBACK_PREFIX = "fedmodel-resume:"
"""Train-config keys of a resumed simulation: ``fedmodel-resume:<owner>`` holds that owner's privacy hand-back."""

SECAGG_NAMES_KEY = "fedmodel-array-names"
"""Train-config key of a SecAgg+ round: the names of the global model's arrays, in the order of the legacy Parameters."""

COHORT_KEY = "fedmodel-cohort"
"""Train/evaluate-config key of a simulation whose nodes host cohorts: the owners this round asks for (a list)."""

COHORT_SEPARATOR = "@"
"""A cohort reply holds each owner's records as ``<record name>@<owner>`` (``arrays@17``, ``metrics@17``)."""

COHORT_ERRORS_KEY = "fedmodel-cohort-errors"
"""ConfigRecord of a cohort reply: ``{owner: reason}`` for each owner whose work failed."""

AUDIT_HEAD_RECORD_KEY = "audit-head"
"""ConfigRecord of a deployed owner's train/evaluate reply: its audit log's ``count`` (entries) and ``tip`` (last mac)."""
