"""The exact RBAC rules the operator needs. They are part of the contract between the operator
and the deploy files (the chart and kustomize render them), so they live in graft.spec.contracts
beside the child kinds they are derived from."""

from graft.spec.contracts import OPERATOR_RBAC_RULES as RULES  # noqa: F401
