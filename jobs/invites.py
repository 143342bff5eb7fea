"""Stale workspace invites cleanup (the graphile-worker guide's example).

Deletes invites older than `older_than_hours` from a JSON file of invites
(`{"invites": [{"id": ..., "created_at": "<ISO-8601>"}]}`); a real service would
run a DELETE against its database instead. Scheduled hourly.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from supervisor import Context, job


class CleanupStaleInvites(BaseModel):
    older_than_hours: int = Field(336, gt=0, description="Invites older than this are deleted (14 days).")
    store: str = Field("state/invites.json", description="Path of the invites file.")


@job("workspaces.invites.cleanup-stale", max_deliver=3, schedule="0 * * * *")
def cleanup_stale_invites(payload: CleanupStaleInvites, ctx: Context) -> dict[str, int]:
    path = Path(payload.store)
    if not path.exists():
        return {"deleted": 0, "kept": 0}
    invites = json.loads(path.read_text()).get("invites", [])
    cutoff = datetime.now(UTC) - timedelta(hours=payload.older_than_hours)
    kept = [i for i in invites if datetime.fromisoformat(i["created_at"]) >= cutoff]
    # Write atomically so a crash mid-write cannot lose the file; a rerun is harmless.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".invites.")
    with os.fdopen(fd, "w") as out:
        json.dump({"invites": kept}, out)
    os.replace(tmp, path)
    ctx.log.info("invites.cleaned", deleted=len(invites) - len(kept), kept=len(kept))
    return {"deleted": len(invites) - len(kept), "kept": len(kept)}
