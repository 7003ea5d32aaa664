"""Why a job's pods are not running yet: the derivation is shared with the SDK, so it lives in
graft.jobstatus; the operator's modules and tests import it from here too."""

from graft.jobstatus import HINTS, STUCK_WAITING, explain_pending  # noqa: F401
